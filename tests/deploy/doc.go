// Package deploy checks the deployment artifacts statically and by running what can run here: the
// Kubernetes manifest, the Dockerfile, the systemd unit and install scripts, and the Vagrant setup,
// each against the flags and subcommands the built binaries really accept.
package deploy
