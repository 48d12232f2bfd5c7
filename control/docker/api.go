package docker

// The libnetwork remote API's messages, as dockerd sends and expects them (docker/libnetwork
// docs/remote.md and docs/ipam.md). Field names are the wire names; dockerd's JSON decoder
// matches them case-insensitively, ours (encoding/json) too.

// Paths of the calls.
const (
	pathActivate = "/Plugin.Activate"

	pathNetCapabilities   = "/NetworkDriver.GetCapabilities"
	pathCreateNetwork     = "/NetworkDriver.CreateNetwork"
	pathDeleteNetwork     = "/NetworkDriver.DeleteNetwork"
	pathAllocateNetwork   = "/NetworkDriver.AllocateNetwork"
	pathFreeNetwork       = "/NetworkDriver.FreeNetwork"
	pathCreateEndpoint    = "/NetworkDriver.CreateEndpoint"
	pathEndpointOperInfo  = "/NetworkDriver.EndpointOperInfo"
	pathDeleteEndpoint    = "/NetworkDriver.DeleteEndpoint"
	pathJoin              = "/NetworkDriver.Join"
	pathLeave             = "/NetworkDriver.Leave"
	pathDiscoverNew       = "/NetworkDriver.DiscoverNew"
	pathDiscoverDelete    = "/NetworkDriver.DiscoverDelete"
	pathProgramExternal   = "/NetworkDriver.ProgramExternalConnectivity"
	pathRevokeExternal    = "/NetworkDriver.RevokeExternalConnectivity"
	pathIpamCapabilities  = "/IpamDriver.GetCapabilities"
	pathIpamAddressSpaces = "/IpamDriver.GetDefaultAddressSpaces"
	pathRequestPool       = "/IpamDriver.RequestPool"
	pathReleasePool       = "/IpamDriver.ReleasePool"
	pathRequestAddress    = "/IpamDriver.RequestAddress"
	pathReleaseAddress    = "/IpamDriver.ReleaseAddress"
)

// ContentType is the media type of every answer.
const ContentType = "application/vnd.docker.plugins.v1+json"

type activateResponse struct {
	Implements []string
}

type errorResponse struct {
	Err string
}

type capabilitiesResponse struct {
	Scope             string
	ConnectivityScope string
}

type ipamData struct {
	AddressSpace string
	Pool         string
	Gateway      string            `json:",omitempty"`
	AuxAddresses map[string]string `json:",omitempty"`
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type networkRequest struct { // DeleteNetwork, FreeNetwork, AllocateNetwork
	NetworkID string
}

type endpointInterface struct {
	Address     string `json:",omitempty"`
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type createEndpointResponse struct {
	Interface *endpointInterface `json:",omitempty"` // nil: dockerd's address and MAC stand
}

type endpointRequest struct { // DeleteEndpoint, EndpointOperInfo, Leave, Program/RevokeExternalConnectivity
	NetworkID  string
	EndpointID string
	Options    map[string]any
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type interfaceName struct {
	SrcName   string
	DstPrefix string
}

type staticRoute struct {
	Destination string
	RouteType   int    // 0: via NextHop, 1: connected
	NextHop     string `json:",omitempty"`
}

// routeConnected is libnetwork's types.CONNECTED.
const routeConnected = 1

type joinResponse struct {
	InterfaceName         interfaceName
	Gateway               string
	StaticRoutes          []staticRoute
	DisableGatewayService bool
}

type operInfoResponse struct {
	Value map[string]any
}

type discoveryRequest struct {
	DiscoveryType int
	DiscoveryData any
}

type ipamCapabilitiesResponse struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

type addressSpacesResponse struct {
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type releasePoolRequest struct {
	PoolID string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	Address string
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}
