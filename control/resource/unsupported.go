package resource

// Why Margay rejects what Calico accepts: each reason completes "not supported by Margay
// (...)". These are all the reasons; the package documentation lists the fields. When Margay
// learns to enforce one, its checks go, and its entry here with them.
const (
	whyIPv6          = "Margay is IPv4-only"
	whyHTTP          = "application layer policy needs a proxy, which Margay does not have"
	whyServices      = "Margay does not follow Kubernetes Services"
	whyProfilePass   = "a profile's rules come after every tier, so Pass has nothing to pass to: use Deny"
	whyHostEndpoints = "it concerns host endpoints, which Margay does not have"

	whyEncapsulation = "Margay routes without encapsulation"
	whyNAT           = "Margay does no NAT"
	whyLoadBalancer  = "Margay does not allocate LoadBalancer addresses"
	whyPoolSelection = "Margay's IPAM takes every pool for every node and namespace"
	whyManualPool    = "Margay's IPAM assigns from every enabled pool"
	whyPoolExport    = "Margay advertises the blocks of every pool"

	whySelectedPeers = "Margay peers with every node (the mesh) or by address (peerIP)"
	whyPeerPort      = "Margay's peers are reached on port 179"
	whySecrets       = "Margay cannot read Kubernetes secrets"
	whyBGPOption     = "Margay's BGP speaker has no such setting"
	whyBGPTimers     = "the agent's --bgp-hold-time, --bgp-keepalive and --bgp-restart-time set Margay's BGP timers"
	whyBGPListen     = "the agent's --bgp-port and --bgp-listen-address set where Margay's BGP speaker listens"
	whyBGPLogLevel   = "the agent's --log-level sets Margay's log level"
	whyBGPPerNode    = "Margay has one cluster-wide BGP configuration, named default"
	whyServiceRoutes = "Margay does not advertise Service addresses"
	whyCommunities   = "Margay advertises no BGP communities"
	whyRoutePriority = "Margay's workload routes have no configurable metric"
	whyWorkloadPeers = "Margay does not peer with workloads"
	whyDeviceRoutes  = "Margay does not import device routes"
	whyClusterRoutes = "Margay's agent programs the routes BGP learns"
)
