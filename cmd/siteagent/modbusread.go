package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	lib "github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/drivers/modbus"
)

const modbusUsage = `usage:
  siteagent modbus read ENDPOINT UNIT ADDRESS COUNT [flags]
      read COUNT values of --type from --table at the zero-based ADDRESS of
      unit UNIT, and decode them as the agent would (tcp://host:502, or
      tcp+tls://host:802 with --tls-ca, --tls-cert, --tls-key)
`

func cmdModbus(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "read" {
		if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
			fmt.Fprint(stdout, modbusUsage)
			return 0
		}
		fmt.Fprint(stderr, modbusUsage)
		return 2
	}
	return cmdModbusRead(args[1:], stdout, stderr)
}

func cmdModbusRead(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("modbus read", flag.ContinueOnError)
	fs.SetOutput(stderr)
	typName := fs.String("type", "", "bool, int16, uint16, int32, uint32, int64, uint64, float32, float64 (uint16 for registers, bool for bits, unless set)")
	orderName := fs.String("order", "ABCD", "word/byte order: ABCD, CDAB, BADC or DCBA")
	tableName := fs.String("table", "holding", "coil, discrete, holding or input")
	scale := fs.Float64("scale", 1, "value = raw × scale + offset")
	offset := fs.Float64("offset", 0, "value = raw × scale + offset")
	timeout := fs.Duration("timeout", 2*time.Second, "per request")
	caFile := fs.String("tls-ca", "", "tcp+tls: the CA of the device's certificate (PEM)")
	certFile := fs.String("tls-cert", "", "tcp+tls: the agent's client certificate (PEM)")
	keyFile := fs.String("tls-key", "", "tcp+tls: the client certificate's key (PEM)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 4 {
		fmt.Fprint(stderr, modbusUsage)
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "siteagent: "+format+"\n", a...)
		return 2
	}
	endpoint := pos[0]
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "tcp+tls") || u.Host == "" {
		return bad("ENDPOINT %q: write tcp://host:port or tcp+tls://host:port", endpoint)
	}
	unit, err := strconv.ParseUint(pos[1], 10, 8)
	if err != nil {
		return bad("UNIT %q: write the unit id, 0..255", pos[1])
	}
	addr, err := strconv.ParseUint(pos[2], 0, 16)
	if err != nil {
		return bad("ADDRESS %q: write the zero-based address, 0..65535 (register 40001 is holding 0)", pos[2])
	}
	count, err := strconv.Atoi(pos[3])
	if err != nil || count < 1 {
		return bad("COUNT %q: write how many values to read, 1 or more", pos[3])
	}
	bits := *tableName == "coil" || *tableName == "discrete"
	if *tableName != "holding" && *tableName != "input" && !bits {
		return bad("--table %q: write coil, discrete, holding or input", *tableName)
	}
	if *typName == "" {
		*typName = "uint16"
		if bits {
			*typName = "bool"
		}
	}
	typ, ok := modbus.ParseType(*typName)
	if !ok {
		return bad("--type %q: write bool, int16, uint16, int32, uint32, int64, uint64, float32 or float64", *typName)
	}
	order, ok := modbus.ParseOrder(*orderName)
	if !ok {
		return bad("--order %q: write ABCD, CDAB, BADC or DCBA", *orderName)
	}
	if bits != (typ == modbus.Bool) {
		return bad("--type %s does not fit the %s table: bits are bool, registers are numbers", typ, *tableName)
	}
	words := typ.Words()
	if bits {
		words = 1
	}
	if end := int(addr) + count*words - 1; end > 65535 {
		return bad("%d value(s) of %s from %d run past address 65535", count, typ, addr)
	}
	limit := 125
	if bits {
		limit = 2000
	}
	if count*words > limit {
		return bad("%d %s is more than one request reads (%d); lower COUNT", count*words, map[bool]string{true: "bits", false: "registers"}[bits], limit)
	}

	conf := &lib.ClientConfiguration{URL: endpoint, Timeout: *timeout, Logger: log.New(io.Discard, "", 0)}
	if u.Scheme == "tcp+tls" {
		if *caFile == "" || *certFile == "" || *keyFile == "" {
			return bad("tcp+tls needs --tls-ca, --tls-cert and --tls-key")
		}
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return bad("client certificate: %v", err)
		}
		pool, err := lib.LoadCertPool(*caFile)
		if err != nil {
			return bad("--tls-ca: %v", err)
		}
		conf.TLSClientCert, conf.TLSRootCAs = &cert, pool
	}
	client, err := lib.NewClient(conf)
	if err == nil {
		err = client.SetUnitId(uint8(unit))
	}
	if err == nil {
		err = client.Open()
	}
	if err != nil {
		fmt.Fprintf(stderr, "siteagent: %s: %v\n", endpoint, err)
		return 1
	}
	defer client.Close()

	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(stdout, "%s unit %d, %s %d.., %d × %s", endpoint, unit, *tableName, addr, count, typ)
	if !bits {
		fmt.Fprintf(stdout, " %s", order)
	}
	fmt.Fprintln(stdout)
	if bits {
		var vals []bool
		if *tableName == "coil" {
			vals, err = client.ReadCoils(uint16(addr), uint16(count))
		} else {
			vals, err = client.ReadDiscreteInputs(uint16(addr), uint16(count))
		}
		if err != nil {
			fmt.Fprintf(stderr, "siteagent: read: %v\n", err)
			return 1
		}
		fmt.Fprintln(tw, "ADDRESS\tBIT\tVALUE")
		for i, v := range vals {
			raw, x := 0, 0.0
			if v {
				raw, x = 1, 1
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\n", int(addr)+i, raw, formatValue(x**scale+*offset))
		}
		tw.Flush()
		return 0
	}
	tbl := lib.HOLDING_REGISTER
	if *tableName == "input" {
		tbl = lib.INPUT_REGISTER
	}
	wire, err := client.ReadRawBytes(uint16(addr), uint16(2*count*words), tbl)
	if err != nil {
		fmt.Fprintf(stderr, "siteagent: read: %v\n", err)
		return 1
	}
	if len(wire) < 2*count*words {
		fmt.Fprintf(stderr, "siteagent: the device answered %d bytes for %d registers\n", len(wire), count*words)
		return 1
	}
	fmt.Fprintln(tw, "ADDRESS\tREGISTERS\tVALUE")
	for i := range count {
		b := wire[2*i*words : 2*(i+1)*words]
		var regs []string
		for j := 0; j < len(b); j += 2 {
			regs = append(regs, fmt.Sprintf("%02X%02X", b[j], b[j+1]))
		}
		// The agent's own decoding: the same function its polls use.
		v := modbus.Decode(b, typ, order)*(*scale) + *offset
		fmt.Fprintf(tw, "%d\t%s\t%s\n", int(addr)+i*words, strings.Join(regs, " "), formatValue(v))
	}
	tw.Flush()
	return 0
}

func formatValue(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprintf("%g (the agent treats it as bad)", v)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
