package modbus

import (
	"fmt"
	"sort"
	"strings"

	"github.com/siteagent/siteagent/agent/point"
)

// table is one of the four Modbus data tables.
type table uint8

const (
	coilTable table = iota + 1
	discreteTable
	holdingTable
	inputTable
)

var tableNames = [...]string{"", "coil", "discrete", "holding", "input"}

func parseTable(s string) (table, bool) {
	for i := 1; i < len(tableNames); i++ {
		if tableNames[i] == s {
			return table(i), true
		}
	}
	return 0, false
}

func (t table) String() string {
	if int(t) > 0 && int(t) < len(tableNames) {
		return tableNames[t]
	}
	return fmt.Sprintf("table(%d)", uint8(t))
}

// bits reports whether the table holds single bits rather than registers.
func (t table) bits() bool { return t == coilTable || t == discreteTable }

// request is one read of a poll cycle: a contiguous range of one table and
// the points decoded from it.
type request struct {
	table  table
	start  uint16
	count  int // registers or bits
	fields []field
	batch  []point.Update // reused on every poll, one per field
	// refused is the last exception this request got, so that a device
	// refusing it every cycle is logged once.
	refused string
}

func (r *request) String() string {
	return fmt.Sprintf("%s %d..%d", r.table, r.start, int(r.start)+r.count-1)
}

// plannedPoint is a point waiting to be placed in a request.
type plannedPoint struct {
	table table
	field field
}

// plan groups points into as few reads as the limits allow. Points of one
// table whose ranges touch or overlap share a read as long as the read stays
// within maxRegs registers (maxBits bits for coils and discrete inputs); a
// gap starts a new read, and a point never straddles two reads. Tables come
// in the order they first appear in pts, reads within a table by address.
func plan(pts []plannedPoint, maxRegs, maxBits int) []request {
	var order []table
	byTable := map[table][]field{}
	for _, p := range pts {
		if _, ok := byTable[p.table]; !ok {
			order = append(order, p.table)
		}
		byTable[p.table] = append(byTable[p.table], p.field)
	}
	var reqs []request
	for _, t := range order {
		fs := byTable[t]
		sort.SliceStable(fs, func(i, j int) bool { return fs[i].addr < fs[j].addr })
		limit := maxRegs
		if t.bits() {
			limit = maxBits
		}
		var cur *request
		end := 0 // one past the last address of cur
		for _, f := range fs {
			a, e := int(f.addr), int(f.addr)+f.size()
			if cur != nil && a <= end && max(end, e)-int(cur.start) <= limit {
				end = max(end, e)
			} else {
				reqs = append(reqs, request{table: t, start: f.addr})
				cur, end = &reqs[len(reqs)-1], e
			}
			f.off = a - int(cur.start)
			cur.fields = append(cur.fields, f)
			cur.count = end - int(cur.start)
		}
	}
	for i := range reqs {
		r := &reqs[i]
		r.batch = make([]point.Update, len(r.fields))
		for j, f := range r.fields {
			r.batch[j].ID = f.id
		}
	}
	return reqs
}

// describePlan is the start-up log line: "pcc: 3 requests: input 0..5 (3
// points), discrete 0..0 (1 point), holding 10..11 (1 point)".
func describePlan(name string, reqs []request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d %s", name, len(reqs), plural(len(reqs), "request"))
	for i := range reqs {
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		n := len(reqs[i].fields)
		fmt.Fprintf(&b, "%s%s (%d %s)", sep, &reqs[i], n, plural(n, "point"))
	}
	return b.String()
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
