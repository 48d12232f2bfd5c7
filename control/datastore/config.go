package datastore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Defaults for fields of Config left empty.
const (
	DefaultEndpoint    = "http://127.0.0.1:2379"
	DefaultPrefix      = "/margay/v1/"
	DefaultDialTimeout = 5 * time.Second
	// DefaultCommandTimeout is how long margayctl and margay-cni wait in all for etcd to answer
	// when no dial timeout is set: a command fails fast, naming the endpoints, instead of hanging.
	DefaultCommandTimeout = 3 * time.Second
)

// Config says how to reach etcd. Empty fields mean their default. Settings come from flags, then
// the environment, then a file, the first that sets a field winning:
//
//	var cfg datastore.Config
//	cfg.BindFlags(fs)
//	_ = fs.Parse(args)
//	if err := cfg.ApplyEnv(os.Getenv); err != nil { ... }
//	file, err := datastore.LoadConfigFile(path) // if there is one
//	cfg.FillFrom(file)
type Config struct {
	Endpoints   []string      // URLs, e.g. https://10.0.0.1:2379; default DefaultEndpoint
	CAFile      string        // PEM CA bundle that signs the etcd server certificates
	CertFile    string        // PEM client certificate, with KeyFile
	KeyFile     string        // PEM client key, with CertFile
	Username    string        // etcd user, with Password
	Password    string        // etcd password
	Prefix      string        // key prefix, starts and ends with "/"; default DefaultPrefix
	DialTimeout time.Duration // per connection attempt; default DefaultDialTimeout
}

// BindFlags binds the flags --etcd-endpoints, --etcd-ca, --etcd-cert, --etcd-key,
// --etcd-username, --etcd-password, --etcd-dial-timeout and --datastore-prefix to c. The flags'
// defaults are c's current values (normally empty), so ApplyEnv can fill what they leave empty.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Endpoints, "etcd-endpoints", c.Endpoints, "etcd client URLs, comma-separated (default "+DefaultEndpoint+"; env MARGAY_ETCD_ENDPOINTS)")
	fs.StringVar(&c.CAFile, "etcd-ca", c.CAFile, "PEM CA bundle for the etcd server certificate (env MARGAY_ETCD_CA)")
	fs.StringVar(&c.CertFile, "etcd-cert", c.CertFile, "PEM client certificate for etcd (env MARGAY_ETCD_CERT)")
	fs.StringVar(&c.KeyFile, "etcd-key", c.KeyFile, "PEM client key for etcd (env MARGAY_ETCD_KEY)")
	fs.StringVar(&c.Username, "etcd-username", c.Username, "etcd user name (env MARGAY_ETCD_USERNAME)")
	fs.StringVar(&c.Password, "etcd-password", c.Password, "etcd password; prefer the environment (env MARGAY_ETCD_PASSWORD)")
	fs.DurationVar(&c.DialTimeout, "etcd-dial-timeout", c.DialTimeout, "timeout of one etcd connection attempt (default 5s; env MARGAY_ETCD_DIAL_TIMEOUT)")
	fs.StringVar(&c.Prefix, "datastore-prefix", c.Prefix, "key prefix of Margay's data in etcd (default "+DefaultPrefix+"; env MARGAY_DATASTORE_PREFIX)")
}

// ApplyEnv fills the fields of c that are still empty from MARGAY_ETCD_ENDPOINTS
// (comma-separated), MARGAY_ETCD_CA, MARGAY_ETCD_CERT, MARGAY_ETCD_KEY, MARGAY_ETCD_USERNAME,
// MARGAY_ETCD_PASSWORD, MARGAY_ETCD_DIAL_TIMEOUT and MARGAY_DATASTORE_PREFIX.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	if v := getenv("MARGAY_ETCD_ENDPOINTS"); v != "" && len(c.Endpoints) == 0 {
		for i, ep := range strings.Split(v, ",") {
			ep = strings.TrimSpace(ep)
			if ep == "" {
				return fmt.Errorf("datastore: MARGAY_ETCD_ENDPOINTS: endpoint %d is empty", i+1)
			}
			c.Endpoints = append(c.Endpoints, ep)
		}
	}
	fill := func(field *string, name string) {
		if *field == "" {
			*field = getenv(name)
		}
	}
	fill(&c.CAFile, "MARGAY_ETCD_CA")
	fill(&c.CertFile, "MARGAY_ETCD_CERT")
	fill(&c.KeyFile, "MARGAY_ETCD_KEY")
	fill(&c.Username, "MARGAY_ETCD_USERNAME")
	fill(&c.Password, "MARGAY_ETCD_PASSWORD")
	fill(&c.Prefix, "MARGAY_DATASTORE_PREFIX")
	if v := getenv("MARGAY_ETCD_DIAL_TIMEOUT"); v != "" && c.DialTimeout == 0 {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("datastore: MARGAY_ETCD_DIAL_TIMEOUT: %w", err)
		}
		c.DialTimeout = d
	}
	return nil
}

// FillFrom copies into c every field that c leaves empty and from sets.
func (c *Config) FillFrom(from Config) {
	if len(c.Endpoints) == 0 {
		c.Endpoints = from.Endpoints
	}
	fill := func(field *string, v string) {
		if *field == "" {
			*field = v
		}
	}
	fill(&c.CAFile, from.CAFile)
	fill(&c.CertFile, from.CertFile)
	fill(&c.KeyFile, from.KeyFile)
	fill(&c.Username, from.Username)
	fill(&c.Password, from.Password)
	fill(&c.Prefix, from.Prefix)
	if c.DialTimeout == 0 {
		c.DialTimeout = from.DialTimeout
	}
}

// FileConfig is the on-disk form of Config. Other config files may embed it (margayctl's adds
// the node name) and read themselves with LoadFileInto.
type FileConfig struct {
	Endpoints   []string `json:"endpoints,omitempty"`
	CAFile      string   `json:"caFile,omitempty"`
	CertFile    string   `json:"certFile,omitempty"`
	KeyFile     string   `json:"keyFile,omitempty"`
	Username    string   `json:"username,omitempty"`
	Password    string   `json:"password,omitempty"`
	Prefix      string   `json:"prefix,omitempty"`
	DialTimeout string   `json:"dialTimeout,omitempty"` // Go duration, e.g. "5s"
}

// Resolve completes c, as flags set it, in the order the Config comment gives: the MARGAY_*
// variables of getenv, then the config file at path unless it is "", then validates it: what a
// daemon's command line (margay-agent, margay-docker) does with --config.
func (c Config) Resolve(getenv func(string) string, path string) (Config, error) {
	if err := c.ApplyEnv(getenv); err != nil {
		return c, err
	}
	if path != "" {
		file, err := LoadConfigFile(path)
		if err != nil {
			return c, err
		}
		c.FillFrom(file)
	}
	return c, c.Validate()
}

// LoadConfigFile reads a Config from a YAML or JSON file with the fields endpoints, caFile,
// certFile, keyFile, username, password, prefix and dialTimeout ("5s"). Unknown or repeated
// fields are an error. Relative TLS file names are taken relative to the file's directory.
func LoadConfigFile(path string) (Config, error) {
	var f FileConfig
	if err := LoadFileInto(path, &f); err != nil {
		return Config{}, err
	}
	return f.Config(path)
}

// LoadFileInto reads a YAML or JSON config file into v (a pointer to FileConfig or to a struct
// that embeds it); unknown or repeated fields are an error.
func LoadFileInto(path string, v any) error {
	data, err := readConfigFile(path)
	if err != nil {
		return fmt.Errorf("datastore: load config: %w", err)
	}
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		return fmt.Errorf("datastore: load config %s: %w", path, err)
	}
	return nil
}

// Config returns the Config that f, read from the file at path, describes: relative TLS file
// names are taken relative to the file's directory.
func (f FileConfig) Config(path string) (Config, error) {
	c := Config{
		Endpoints: f.Endpoints,
		CAFile:    RelativeTo(path, f.CAFile),
		CertFile:  RelativeTo(path, f.CertFile),
		KeyFile:   RelativeTo(path, f.KeyFile),
		Username:  f.Username,
		Password:  f.Password,
		Prefix:    f.Prefix,
	}
	if f.DialTimeout != "" {
		var err error
		if c.DialTimeout, err = time.ParseDuration(f.DialTimeout); err != nil {
			return Config{}, fmt.Errorf("datastore: load config %s: dialTimeout: %w", path, err)
		}
	}
	return c, nil
}

// FileConfig is c as a config file writes it, which FileConfig.Config reads back to c when its
// TLS file names are absolute (relative ones are taken relative to the file): the dial timeout as
// a Go duration, "" for none.
func (c Config) FileConfig() FileConfig {
	f := FileConfig{Endpoints: c.Endpoints, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile,
		Username: c.Username, Password: c.Password, Prefix: c.Prefix}
	if c.DialTimeout != 0 {
		f.DialTimeout = c.DialTimeout.String()
	}
	return f
}

// maxConfigFile bounds what LoadConfigFile reads: a datastore config is a few lines.
const maxConfigFile = 1 << 20

// readConfigFile reads a regular file of at most maxConfigFile bytes: a path that names a device,
// a FIFO or a huge file by mistake gets an error instead of a hang.
func readConfigFile(path string) ([]byte, error) {
	// Stat first: opening a FIFO would block until someone writes to it.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxConfigFile)
	}
	return data, nil
}

// RelativeTo returns a file name as a config file at configPath means it: a relative name is
// taken relative to that file's directory; an absolute or empty one stays as it is.
func RelativeTo(configPath, file string) string {
	if file == "" || filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(filepath.Dir(configPath), file)
}

// EndpointsOrDefault returns the endpoints c reaches: its own, or DefaultEndpoint.
func (c Config) EndpointsOrDefault() []string { return c.withDefaults().Endpoints }

// CommandDialTimeout is how long a command waits in all for etcd to answer (Dial): c's dial
// timeout, else DefaultCommandTimeout.
func (c Config) CommandDialTimeout() time.Duration {
	if c.DialTimeout == 0 {
		return DefaultCommandTimeout
	}
	return c.DialTimeout
}

// PrefixOrDefault returns the key prefix c uses: its own, or DefaultPrefix.
func (c Config) PrefixOrDefault() string { return c.withDefaults().Prefix }

// SameStore reports whether c and o reach the same data as the same user: the same endpoints (in
// any order, a trailing "/" aside), the same key prefix and the same etcd user.
func (c Config) SameStore(o Config) bool {
	c, o = c.withDefaults(), o.withDefaults()
	norm := func(eps []string) []string {
		out := make([]string, len(eps))
		for i, ep := range eps {
			out[i] = strings.TrimSuffix(ep, "/")
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(norm(c.Endpoints), norm(o.Endpoints)) && c.Prefix == o.Prefix && c.Username == o.Username
}

func (c Config) withDefaults() Config {
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{DefaultEndpoint}
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	return c
}

// Validate reports everything wrong with c (empty fields stand for their defaults): endpoints
// must be http(s) URLs with a port, TLS files must exist and come in pairs, TLS files need https
// endpoints, and the prefix must start and end with "/".
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for _, ep := range c.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range []struct{ flag, path string }{{"etcd-ca", c.CAFile}, {"etcd-cert", c.CertFile}, {"etcd-key", c.KeyFile}} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.flag, err))
		} else if !st.Mode().IsRegular() {
			errs = append(errs, fmt.Errorf("%s: %s is not a regular file", f.flag, f.path))
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("etcd-cert and etcd-key must be given together"))
	}
	if c.CAFile != "" || c.CertFile != "" {
		for _, ep := range c.Endpoints {
			if strings.HasPrefix(ep, "http://") {
				errs = append(errs, fmt.Errorf("endpoint %q is plain http but TLS files are given; use https", ep))
			}
		}
	}
	if c.Password != "" && c.Username == "" {
		errs = append(errs, errors.New("etcd-password given without etcd-username"))
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") {
		errs = append(errs, fmt.Errorf("prefix %q must start and end with \"/\"", c.Prefix))
	} else if strings.Contains(c.Prefix, "//") || strings.Contains(c.Prefix, "/../") || strings.Contains(c.Prefix, "/./") {
		errs = append(errs, fmt.Errorf("prefix %q has an empty, \".\" or \"..\" segment", c.Prefix))
	}
	if c.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("dial timeout %s is negative", c.DialTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datastore: invalid config: %w", err)
	}
	return nil
}

func checkEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return fmt.Errorf("endpoint %q: %w", ep, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("endpoint %q: want an http:// or https:// URL", ep)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("endpoint %q: want host:port", ep)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("endpoint %q: want only scheme://host:port", ep)
	}
	return nil
}

func (c Config) anyHTTPS() bool {
	for _, ep := range c.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			return true
		}
	}
	return false
}

// LogValue keeps the password out of logs.
func (c Config) LogValue() slog.Value {
	pw := ""
	if c.Password != "" {
		pw = "<redacted>"
	}
	return slog.GroupValue(
		slog.Any("endpoints", c.Endpoints),
		slog.String("ca", c.CAFile),
		slog.String("cert", c.CertFile),
		slog.String("key", c.KeyFile),
		slog.String("username", c.Username),
		slog.String("password", pw),
		slog.String("prefix", c.Prefix),
		slog.Duration("dialTimeout", c.DialTimeout),
	)
}
