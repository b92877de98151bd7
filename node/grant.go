package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node/wire"
)

// decided is a checked grant: what every GPU should be held at, and until
// when.
type decided struct {
	grant      wire.Grant
	want       []uint32 // mW per GPU index; 0: not throttleable, leave it
	leaseUntil time.Time
	note       string // something the site should know (a shortened lease)
}

// refusal is a grant the node will not apply; its text goes into the ack
// and the log.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refuse(format string, args ...any) error { return &refusal{fmt.Sprintf(format, args...)} }

// decodeGrant parses a payload; a payload that is not a grant is refused
// as malformed.
func decodeGrant(payload []byte) (wire.Grant, error) {
	var g wire.Grant
	if err := json.Unmarshal(payload, &g); err != nil {
		return g, refuse("malformed grant: %v", err)
	}
	return g, nil
}

// check decides whether grant g, received at now, may be applied, and what
// it means for each GPU. cur is what the GPUs are held at now. Nothing is
// changed here: a refused grant leaves the node exactly as it was.
func (n *Node) check(g *wire.Grant, now time.Time, cur []uint32) (*decided, error) {
	cfg := n.cfg
	switch {
	case g.Site != cfg.Node.Site:
		return nil, refuse("grant from site %q, but this node belongs to site %q", g.Site, cfg.Node.Site)
	case g.Node != cfg.Node.ID:
		return nil, refuse("grant addressed to node %q, but this node is %q", g.Node, cfg.Node.ID)
	case g.Issued.IsZero():
		return nil, refuse("malformed grant: no issue time")
	case g.LeaseMS < 0:
		return nil, refuse("malformed grant: negative lease %d ms", g.LeaseMS)
	case g.Epoch < n.epoch || (g.Epoch == n.epoch && g.Seq <= n.seq):
		return nil, refuse("stale grant: epoch %d seq %d is not newer than the last one taken (epoch %d seq %d)", g.Epoch, g.Seq, n.epoch, n.seq)
	}
	lease := time.Duration(g.LeaseMS) * time.Millisecond
	if lease == 0 {
		lease = cfg.Lease.Default
	}
	d := &decided{grant: *g}
	if lease > cfg.Lease.Max {
		d.note = fmt.Sprintf("lease of %s shortened to this node's maximum of %s", lease, cfg.Lease.Max)
		lease = cfg.Lease.Max
	}
	skew := cfg.Lease.MaxClockSkew
	if g.Issued.After(now.Add(skew)) {
		return nil, refuse("grant issued %s in the future: the site's and this node's clocks differ by more than %s; check NTP", g.Issued.Sub(now).Round(time.Millisecond), skew)
	}
	end := g.Issued.Add(lease)
	if !end.Add(skew).After(now) {
		return nil, refuse("expired grant: issued %s with a %s lease, which ended %s ago", g.Issued.UTC().Format(time.RFC3339Nano), lease, now.Sub(end).Round(time.Millisecond))
	}
	// The lease runs from whichever is earlier: the issue time (plus the
	// skew the clocks may have) or the arrival here.
	d.leaseUntil = minTime(end.Add(skew), now.Add(lease))

	want, err := n.caps(g, cur)
	if err != nil {
		return nil, err
	}
	d.want = want
	return d, nil
}

// caps turns a grant's caps into milliwatts per GPU index. GPUs the grant
// does not name fall to the safe cap (never above where they are now).
func (n *Node) caps(g *wire.Grant, cur []uint32) ([]uint32, error) {
	want := make([]uint32, len(n.info))
	switch {
	case len(g.Caps) > 0 && g.NodeW != nil:
		return nil, refuse("malformed grant: give caps per GPU or node_w, not both")
	case len(g.Caps) == 0 && g.NodeW == nil:
		return nil, refuse("malformed grant: no caps and no node_w")
	case g.NodeW != nil:
		return n.splitNode(*g.NodeW)
	}
	named := make([]bool, len(n.info))
	for _, c := range g.Caps {
		i, ok := n.byUUID[c.UUID]
		if !ok {
			return nil, refuse("grant names GPU %q, which this node does not have", c.UUID)
		}
		if named[i] {
			return nil, refuse("malformed grant: GPU %q is named twice", c.UUID)
		}
		named[i] = true
		if math.IsNaN(c.W) || math.IsInf(c.W, 0) || c.W <= 0 {
			return nil, refuse("malformed grant: cap %v W for GPU %q", c.W, c.UUID)
		}
		mw := uint32(math.Round(c.W * 1000))
		if err := n.info[i].CheckCap(mw); err != nil {
			return nil, refuse("%v", err)
		}
		want[i] = mw
	}
	for i := range want {
		if !named[i] && n.info[i].Throttleable {
			want[i] = n.safeFrom(i, cur)
		}
	}
	return want, nil
}

// splitNode shares a node-wide cap evenly over the throttleable GPUs. A
// share above a GPU's maximum is that maximum (the node cannot draw more);
// one below its minimum cannot be held, and the grant is refused.
func (n *Node) splitNode(w float64) ([]uint32, error) {
	var k int
	for _, g := range n.info {
		if g.Throttleable {
			k++
		}
	}
	if k == 0 {
		return nil, refuse("this node has no throttleable GPU")
	}
	if math.IsNaN(w) || math.IsInf(w, 0) || w <= 0 {
		return nil, refuse("malformed grant: node cap %v W", w)
	}
	share := uint32(math.Floor(w * 1000 / float64(k)))
	want := make([]uint32, len(n.info))
	for i, g := range n.info {
		if !g.Throttleable {
			continue
		}
		if share < g.MinMW {
			return nil, refuse("node cap %.0f W gives each of %d GPUs %.0f W, below GPU %d's minimum of %.0f W", w, k, float64(share)/1000, i, float64(g.MinMW)/1000)
		}
		want[i] = min(share, g.MaxMW)
	}
	return want, nil
}

// safeFrom is GPU i's safe cap, never above where it is held now: a node
// that loses its lease during a grid event must not add load.
func (n *Node) safeFrom(i int, cur []uint32) uint32 {
	s := n.safe[i]
	if cur != nil && cur[i] != 0 && cur[i] < s {
		return cur[i]
	}
	return s
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// ackFor builds the acknowledgement of an applied grant.
func (n *Node) ackFor(d *decided, res []nvml.SetResult, now time.Time) wire.Ack {
	a := wire.Ack{Site: n.cfg.Node.Site, Node: n.cfg.Node.ID, Epoch: d.grant.Epoch, Seq: d.grant.Seq, TS: now.UTC(), Result: wire.Applied, Reason: d.note}
	lu := d.leaseUntil.UTC()
	a.LeaseUntil = &lu
	var failed []error
	for i, r := range res {
		if d.want[i] == 0 {
			continue
		}
		ga := wire.GPUAck{Index: i, UUID: n.info[i].UUID, GrantedW: float64(d.want[i]) / 1000, EnforcedW: float64(r.EnforcedMW) / 1000,
			Set: r.Changed, HeldElsewhere: r.HeldElsewhere}
		if r.Err != nil {
			ga.Error = r.Err.Error()
			failed = append(failed, r.Err)
		}
		if r.DryRun {
			a.Result = wire.DryRun
		}
		a.GPUs = append(a.GPUs, ga)
	}
	if len(failed) > 0 {
		a.Result = wire.Partial
		if len(failed) == len(a.GPUs) {
			a.Result = wire.Failed
		}
		msg := fmt.Sprintf("%d GPU(s) failed: %v", len(failed), errors.Join(failed...))
		if a.Reason != "" {
			msg = a.Reason + "; " + msg
		}
		a.Reason = msg
	}
	return a
}
