package resource

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Port is a port, a range of ports or a named port, as Calico's numorstring.Port: written 80,
// "80", "8000:8080" or "http". A single port has Min == Max; a named port has only Name.
type Port struct {
	Min, Max uint16
	Name     string
}

// SinglePort returns the Port p.
func SinglePort(p uint16) Port { return Port{Min: p, Max: p} }

// PortRange returns the ports lo to hi.
func PortRange(lo, hi uint16) Port { return Port{Min: lo, Max: hi} }

// NamedPort returns the port named name.
func NamedPort(name string) Port { return Port{Name: name} }

var (
	portRangeRe = regexp.MustCompile(`^(\d+):(\d+)$`)
	portNameRe  = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,128}$`)
)

// ParsePort reads a port in its string form: "80", "8000:8080" or a name.
func ParsePort(s string) (Port, error) {
	if s != "" && strings.Trim(s, "0123456789") == "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return Port{}, fmt.Errorf("invalid port %q: more than 65535", s)
		}
		return SinglePort(uint16(n)), nil
	}
	if m := portRangeRe.FindStringSubmatch(s); m != nil {
		lo, err1 := strconv.ParseUint(m[1], 10, 16)
		hi, err2 := strconv.ParseUint(m[2], 10, 16)
		if err1 != nil || err2 != nil {
			return Port{}, fmt.Errorf("invalid port range %q: ports go up to 65535", s)
		}
		if lo > hi {
			return Port{}, fmt.Errorf("invalid port range %q: %d is greater than %d", s, lo, hi)
		}
		return PortRange(uint16(lo), uint16(hi)), nil
	}
	if !portNameRe.MatchString(s) {
		return Port{}, fmt.Errorf("invalid named port %q: a name is 1 to 128 letters, digits, '_', '.' and '-'", s)
	}
	return NamedPort(s), nil
}

// String returns the port in its string form.
func (p Port) String() string {
	switch {
	case p.Name != "":
		return p.Name
	case p.Min == p.Max:
		return strconv.Itoa(int(p.Min))
	}
	return fmt.Sprintf("%d:%d", p.Min, p.Max)
}

// MarshalJSON writes a single port as a number and the others as strings, as Calico does.
func (p Port) MarshalJSON() ([]byte, error) {
	if p.Name == "" && p.Min == p.Max {
		return strconv.AppendUint(nil, uint64(p.Min), 10), nil
	}
	return json.Marshal(p.String())
}

func (p *Port) decodeJSON(v *jsonValue) error {
	switch v.kind {
	case jsonNumber:
		n, err := strconv.ParseUint(v.text, 10, 16)
		if err != nil {
			return fmt.Errorf("invalid port %s: want 1 to 65535", v.text)
		}
		*p = SinglePort(uint16(n))
		return nil
	case jsonString:
		port, err := ParsePort(v.text)
		if err != nil {
			return err
		}
		*p = port
		return nil
	}
	return errors.New("expected a port (a number or a string), got " + v.describe())
}

// The protocol names Calico knows, with their numbers.
var protocolNumbers = map[string]uint8{
	"TCP":     6,
	"UDP":     17,
	"ICMP":    1,
	"ICMPv6":  58,
	"SCTP":    132,
	"UDPLite": 136,
}

// Protocol is an IP protocol, as Calico's numorstring.Protocol: a name (TCP, UDP, ICMP,
// ICMPv6, SCTP, UDPLite) or a number (1 to 255). A protocol given by number has Name "".
// Names are case-sensitive, as in Calico: Validate rejects "tcp".
type Protocol struct {
	Name   string
	Number uint8
}

// ProtocolNamed returns the protocol named name.
func ProtocolNamed(name string) Protocol { return Protocol{Name: name} }

// ProtocolNumber returns protocol number n.
func ProtocolNumber(n uint8) Protocol { return Protocol{Number: n} }

// Num returns the protocol's number, and false for an unknown name.
func (p Protocol) Num() (uint8, bool) {
	if p.Name == "" {
		return p.Number, true
	}
	n, ok := protocolNumbers[p.Name]
	return n, ok
}

// SupportsPorts reports whether rules may match ports of the protocol: TCP, UDP and SCTP.
func (p Protocol) SupportsPorts() bool {
	n, ok := p.Num()
	return ok && (n == 6 || n == 17 || n == 132)
}

// IsICMP reports whether p is ICMP (for IPv4).
func (p Protocol) IsICMP() bool { n, ok := p.Num(); return ok && n == 1 }

// IsICMPv6 reports whether p is ICMPv6.
func (p Protocol) IsICMPv6() bool { n, ok := p.Num(); return ok && n == 58 }

func (p Protocol) String() string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(int(p.Number))
}

// MarshalJSON writes a number as a number and a name as a string, as Calico does.
func (p Protocol) MarshalJSON() ([]byte, error) {
	if p.Name == "" {
		return strconv.AppendUint(nil, uint64(p.Number), 10), nil
	}
	return json.Marshal(p.Name)
}

func (p *Protocol) decodeJSON(v *jsonValue) error {
	n, s, err := uint8OrString(v)
	if err != nil {
		return fmt.Errorf("invalid protocol: %w", err)
	}
	*p = Protocol{Name: s, Number: n}
	return nil
}

// uint8OrString reads Calico's Uint8OrString: a number 0-255, or a string, which is a number
// too when it reads as one ("6").
func uint8OrString(v *jsonValue) (uint8, string, error) {
	switch v.kind {
	case jsonNumber:
		n, err := strconv.ParseUint(v.text, 10, 8)
		if err != nil {
			return 0, "", fmt.Errorf("%s is not a number from 0 to 255", v.text)
		}
		return uint8(n), "", nil
	case jsonString:
		if n, err := strconv.ParseUint(v.text, 10, 8); err == nil {
			return uint8(n), "", nil
		}
		if v.text == "" {
			return 0, "", errors.New("an empty string")
		}
		return 0, v.text, nil
	}
	return 0, "", errors.New("expected a number or a string, got " + v.describe())
}

// ASNumber is an autonomous system number. A manifest may write it as a number, a string of
// digits, or in dotted (asdot) form "1.10", which is 1<<16 + 10.
type ASNumber uint32

// ParseASNumber reads an AS number written as digits or in dotted form.
func ParseASNumber(s string) (ASNumber, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return ASNumber(n), nil
	}
	hi, lo, ok := strings.Cut(s, ".")
	h, err1 := strconv.ParseUint(hi, 10, 16)
	l, err2 := strconv.ParseUint(lo, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid AS number %q: want 0 to %d, or <0-65535>.<0-65535>", s, uint32(math.MaxUint32))
	}
	return ASNumber(h<<16 | l), nil
}

func (a ASNumber) String() string { return strconv.FormatUint(uint64(a), 10) }

func (a *ASNumber) decodeJSON(v *jsonValue) error {
	switch v.kind {
	case jsonNumber:
		n, err := strconv.ParseUint(v.text, 10, 32)
		if err != nil {
			return fmt.Errorf("invalid AS number %s: want 0 to %d", v.text, uint32(math.MaxUint32))
		}
		*a = ASNumber(n)
		return nil
	case jsonString:
		n, err := ParseASNumber(v.text)
		if err != nil {
			return err
		}
		*a = n
		return nil
	}
	return errors.New("expected an AS number (a number or a string), got " + v.describe())
}

// Duration is a length of time written as Go writes one ("120s", "2m0s"), as Kubernetes'
// metav1.Duration is; it is printed in Go's canonical form.
type Duration struct{ time.Duration }

// MarshalJSON writes d in Go's form, e.g. "2m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) decodeJSON(v *jsonValue) error {
	if v.kind != jsonString {
		return errors.New(`expected a duration such as "120s", got ` + v.describe())
	}
	parsed, err := time.ParseDuration(v.text)
	if err != nil {
		return fmt.Errorf("invalid duration %q: want a number with a unit, such as 120s or 2m", v.text)
	}
	d.Duration = parsed
	return nil
}

// The DSCP class names Calico knows, with their values.
var dscpValues = map[string]uint8{
	"DF": 0, "EF": 46,
	"AF11": 10, "AF12": 12, "AF13": 14,
	"AF21": 18, "AF22": 20, "AF23": 22,
	"AF31": 26, "AF32": 28, "AF33": 30,
	"AF41": 34, "AF42": 36, "AF43": 38,
	"CS0": 0, "CS1": 8, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48,
}

// DSCP is a Differentiated Services code point, by number (0 to 63) or class name (EF, AF11,
// CS1, ...), as Calico's numorstring.DSCP.
type DSCP struct {
	Name   string
	Number uint8
}

// MarshalJSON writes a number as a number and a name as a string.
func (d DSCP) MarshalJSON() ([]byte, error) {
	if d.Name == "" {
		return strconv.AppendUint(nil, uint64(d.Number), 10), nil
	}
	return json.Marshal(d.Name)
}

func (d *DSCP) decodeJSON(v *jsonValue) error {
	n, s, err := uint8OrString(v)
	if err != nil {
		return fmt.Errorf("invalid DSCP: %w", err)
	}
	*d = DSCP{Name: s, Number: n}
	return nil
}

// check reports a DSCP that is no number from 0 to 63 and no class name.
func (d DSCP) check() error {
	if d.Name == "" {
		if d.Number > 63 {
			return fmt.Errorf("DSCP %d: want 0 to 63", d.Number)
		}
		return nil
	}
	if _, ok := dscpValues[strings.ToUpper(strings.TrimSpace(d.Name))]; !ok {
		return fmt.Errorf("%q is not a DSCP value: want 0 to 63 or a class name (DF, EF, AF11 ... AF43, CS0 ... CS6)", d.Name)
	}
	return nil
}
