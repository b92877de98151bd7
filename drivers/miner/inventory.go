package miner

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/siteagent/siteagent/agent/config"
)

// MaxMiners bounds one group's inventory: a mistyped CIDR (/8 for /24)
// must not allocate millions of miners.
const MaxMiners = 100_000

// Resolve reads the inventory (the file, then the hosts table), expands
// CIDR ranges and checks every entry, adding problems under path. baseDir
// resolves a relative inventory_file. After it, Inventory lists the
// miners.
func (c *GroupConfig) Resolve(p *config.Problems, path, baseDir, group string) {
	key := func(k string) string { return config.Join(path, k) }
	var out []Miner
	seen := map[string]string{} // host -> where it was first listed
	problems := 0
	add := func(where string, e HostEntry, fail func(format string, args ...any)) {
		ms, err := e.expand(group, MaxMiners-len(out))
		if err != nil {
			problems++
			fail("%v", err)
			return
		}
		for _, m := range ms {
			if first, dup := seen[m.Host]; dup {
				problems++
				fail("miner %s is listed twice (first at %s); list each miner once", m.Host, first)
				return
			}
			seen[m.Host] = where
		}
		out = append(out, ms...)
	}
	if c.InventoryFile != "" {
		file := c.InventoryFile
		if !filepath.IsAbs(file) && baseDir != "" {
			file = filepath.Join(baseDir, file)
		}
		entries, err := ReadInventoryFile(file)
		fk := key("inventory_file")
		if err != nil {
			problems++
			p.Addf(fk, "%v", err)
		}
		for _, fe := range entries {
			where := fmt.Sprintf("%s:%d", c.InventoryFile, fe.Line)
			add(where, fe.HostEntry, func(format string, args ...any) {
				p.Addf(fk, "%s: %s", where, fmt.Sprintf(format, args...))
			})
		}
	}
	for i, e := range c.Hosts {
		hk := config.Index(key("hosts"), i)
		add(hk, e, func(format string, args ...any) { p.Addf(hk, format, args...) })
	}
	if len(out) == 0 && problems == 0 {
		p.Addf(path, "the inventory lists no miners")
	}
	c.inventory = out
}

// expand turns an entry into miners, at most limit of them.
func (e HostEntry) expand(group string, limit int) ([]Miner, error) {
	fam, ok := ParseFamily(e.Family)
	if !ok {
		if e.Family == "" {
			return nil, fmt.Errorf("family is required: one of %s", familyList())
		}
		return nil, fmt.Errorf("family %q is not one of %s", e.Family, familyList())
	}
	if !(e.RatedW > 0 && e.RatedW <= 20_000) {
		return nil, fmt.Errorf("rated_w %g must be the miner's nameplate power in W, in (0, 20000]", e.RatedW)
	}
	if e.EfficiencyJTH < 0 || e.EfficiencyJTH > 1000 {
		return nil, fmt.Errorf("efficiency_jth %g is outside 0..1000 J/TH", e.EfficiencyJTH)
	}
	if e.Port < 0 || e.Port > 65535 {
		return nil, fmt.Errorf("port %d is not a TCP port", e.Port)
	}
	base := Miner{Family: fam, Group: group, RatedW: e.RatedW, Rack: e.Rack, EfficiencyJTH: e.EfficiencyJTH}
	switch {
	case e.Host != "" && e.CIDR != "":
		return nil, errors.New("give host or cidr, not both")
	case e.Host != "":
		if e.Count != 0 {
			return nil, errors.New("count applies to a cidr range, not to one host")
		}
		h, err := hostAddr(e.Host, e.Port)
		if err != nil {
			return nil, err
		}
		base.Host = h
		return []Miner{base}, nil
	case e.CIDR != "":
		addrs, err := expandCIDR(e.CIDR, e.Count, limit)
		if err != nil {
			return nil, err
		}
		out := make([]Miner, len(addrs))
		for i, a := range addrs {
			m := base
			m.Host = a.String()
			if e.Port != 0 {
				m.Host = netip.AddrPortFrom(a, uint16(e.Port)).String()
			}
			out[i] = m
		}
		return out, nil
	}
	return nil, errors.New("give host (one miner) or cidr (a range)")
}

// hostAddr checks "10.1.2.3", "10.1.2.3:4028", "miner-7.site" and adds
// port when given.
func hostAddr(host string, port int) (string, error) {
	h, p, err := net.SplitHostPort(host)
	if err != nil {
		h, p = host, ""
	}
	if strings.ContainsAny(h, " /,") || h == "" {
		return "", fmt.Errorf("host %q is not an address or a host name (a range goes in cidr)", host)
	}
	if p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("host %q has an invalid port", host)
		}
		if port != 0 && port != n {
			return "", fmt.Errorf("host %q names port %s and port is %d; keep one", host, p, port)
		}
		return host, nil
	}
	if port != 0 {
		return net.JoinHostPort(h, strconv.Itoa(port)), nil
	}
	return h, nil
}

// expandCIDR lists the usable addresses of an IPv4 range in order: the
// network and broadcast addresses of ranges larger than /31 are skipped.
func expandCIDR(cidr string, count, limit int) ([]netip.Addr, error) {
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("cidr %q: %v", cidr, err)
	}
	if !pfx.Addr().Is4() {
		return nil, fmt.Errorf("cidr %q: only IPv4 ranges are expanded; list IPv6 miners by host", cidr)
	}
	if count < 0 {
		return nil, fmt.Errorf("count %d must not be negative", count)
	}
	first := pfx.Masked().Addr()
	bits := pfx.Bits()
	size := 1 << (32 - bits)
	usable := size
	if bits <= 30 {
		usable = size - 2
		first = first.Next()
	}
	// A range written with a host part ("10.1.0.10/22") starts there.
	if a := pfx.Addr(); a != pfx.Masked().Addr() {
		skip := int(ipv4(a) - ipv4(first))
		if skip < 0 || skip >= usable {
			return nil, fmt.Errorf("cidr %q starts at its broadcast address", cidr)
		}
		first, usable = a, usable-skip
	}
	n := usable
	if count > 0 {
		if count > usable {
			return nil, fmt.Errorf("count %d is more than the %d usable addresses of %s", count, usable, cidr)
		}
		n = count
	}
	if n > limit {
		return nil, fmt.Errorf("cidr %q gives %d miners, more than the %d a group may have; check the prefix length or set count", cidr, n, MaxMiners)
	}
	out := make([]netip.Addr, n)
	a := first
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out, nil
}

func ipv4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// FileEntry is one entry of an inventory file, with its line.
type FileEntry struct {
	HostEntry
	Line int
}

// ReadInventoryFile reads a CSV (.csv) or JSON (.json) inventory.
//
// CSV: a header row naming the columns (host, family, rated_w, and
// optionally rack, efficiency_jth, port, count; host may hold a CIDR
// range), then one miner or range per row; lines starting with # are
// comments.
//
// JSON: an array of objects with the same keys as [[groups.miners.hosts]]
// (host, cidr, count, port, family, rated_w, rack, efficiency_jth), or an
// object {"miners": [...]}.
func ReadInventoryFile(file string) ([]FileEntry, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if len(data) > 64<<20 {
		return nil, fmt.Errorf("%s is larger than 64 MiB", file)
	}
	switch strings.ToLower(filepath.Ext(file)) {
	case ".csv":
		return parseCSV(file, data)
	case ".json":
		return parseJSON(file, data)
	}
	return nil, fmt.Errorf("%s: name a .csv or .json file", file)
}

var csvColumns = []string{"host", "family", "rated_w", "rack", "efficiency_jth", "port", "count"}

func parseCSV(file string, data []byte) ([]FileEntry, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.Comment = '#'
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: no header row (host,family,rated_w,...): %v", file, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		known := false
		for _, c := range csvColumns {
			known = known || c == h
		}
		if !known {
			return nil, fmt.Errorf("%s:1: unknown column %q; the columns are %s", file, h, strings.Join(csvColumns, ", "))
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%s:1: column %q appears twice", file, h)
		}
		col[h] = i
	}
	for _, need := range []string{"host", "family", "rated_w"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("%s:1: the header has no %q column", file, need)
		}
	}
	var out []FileEntry
	var problems []string
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			// A ParseError carries its line; FieldPos is only valid after
			// a record was read.
			return out, fmt.Errorf("%s: %v", file, err)
		}
		line, _ := r.FieldPos(0)
		get := func(name string) string {
			if i, ok := col[name]; ok && i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		e := HostEntry{Family: get("family"), Rack: get("rack")}
		if h := get("host"); strings.Contains(h, "/") {
			e.CIDR = h
		} else {
			e.Host = h
		}
		bad := func(name string, err error) {
			problems = append(problems, fmt.Sprintf("%s:%d: %s %q is not a number", file, line, name, get(name)))
		}
		var perr error
		if e.RatedW, perr = strconv.ParseFloat(get("rated_w"), 64); perr != nil {
			bad("rated_w", perr)
			continue
		}
		if s := get("efficiency_jth"); s != "" {
			if e.EfficiencyJTH, perr = strconv.ParseFloat(s, 64); perr != nil {
				bad("efficiency_jth", perr)
				continue
			}
		}
		for _, f := range []struct {
			name string
			dst  *int
		}{{"port", &e.Port}, {"count", &e.Count}} {
			if s := get(f.name); s != "" {
				if *f.dst, perr = strconv.Atoi(s); perr != nil {
					bad(f.name, perr)
				}
			}
		}
		out = append(out, FileEntry{HostEntry: e, Line: line})
	}
	if len(problems) > 0 {
		return out, errors.New(strings.Join(problems, "; "))
	}
	return out, nil
}

func parseJSON(file string, data []byte) ([]FileEntry, error) {
	type entry struct {
		Host          string  `json:"host"`
		CIDR          string  `json:"cidr"`
		Count         int     `json:"count"`
		Port          int     `json:"port"`
		Family        string  `json:"family"`
		RatedW        float64 `json:"rated_w"`
		Rack          string  `json:"rack"`
		EfficiencyJTH float64 `json:"efficiency_jth"`
	}
	trimmed := bytes.TrimSpace(data)
	body := trimmed
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var wrap struct {
			Miners json.RawMessage `json:"miners"`
		}
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&wrap); err != nil {
			return nil, fmt.Errorf("%s:%d: %v (write an array of miners, or {\"miners\": [...]})", file, lineAt(data, dec.InputOffset()), err)
		}
		body = wrap.Miners
	}
	base := int64(max(0, bytes.Index(data, body)))
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('[') {
		return nil, fmt.Errorf("%s: expected an array of miners", file)
	}
	var out []FileEntry
	for dec.More() {
		start := base + dec.InputOffset()
		var e entry
		if err := dec.Decode(&e); err != nil {
			return out, fmt.Errorf("%s:%d: %v", file, lineAt(data, start), err)
		}
		out = append(out, FileEntry{Line: lineAt(data, start+1), HostEntry: HostEntry{Host: e.Host, CIDR: e.CIDR, Count: e.Count, Port: e.Port,
			Family: e.Family, RatedW: e.RatedW, Rack: e.Rack, EfficiencyJTH: e.EfficiencyJTH}})
	}
	return out, nil
}

// lineAt is the 1-based line of byte offset off.
func lineAt(data []byte, off int64) int {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	// Skip the separator and whitespace before the value.
	for off < int64(len(data)) && (data[off] == ',' || data[off] == ' ' || data[off] == '\n' || data[off] == '\r' || data[off] == '\t') {
		off++
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}
