package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/siteagent/siteagent/node/wire"
)

// savedGrant is the last grant taken, kept in node.state_file so that a
// restarted node re-applies a lease that is still running instead of
// dropping to the safe cap and back.
type savedGrant struct {
	Site       string        `json:"site"`
	Node       string        `json:"node"`
	Epoch      int64         `json:"epoch"`
	Seq        uint64        `json:"seq"`
	LeaseUntil time.Time     `json:"lease_until"`
	Caps       []wire.GPUCap `json:"caps"`
}

// loadGrant reads the state file: nil, nil when there is none.
func (n *Node) loadGrant() (*savedGrant, error) {
	path := n.cfg.Node.StateFile
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var sg savedGrant
	if err := json.Unmarshal(b, &sg); err != nil {
		return nil, fmt.Errorf("%s is damaged: %v", path, err)
	}
	return &sg, nil
}

// restoreGrant checks a saved grant against this node and the clock.
func (n *Node) restoreGrant(sg *savedGrant, now time.Time) (*decided, error) {
	switch {
	case sg.Site != n.cfg.Node.Site || sg.Node != n.cfg.Node.ID:
		return nil, fmt.Errorf("it was for node %s of site %s", sg.Node, sg.Site)
	case !sg.LeaseUntil.After(now):
		return nil, fmt.Errorf("its lease ended at %s", sg.LeaseUntil.UTC().Format(time.RFC3339))
	}
	g := wire.Grant{Site: sg.Site, Node: sg.Node, Epoch: sg.Epoch, Seq: sg.Seq, Caps: sg.Caps}
	want, err := n.caps(&g, nil)
	if err != nil {
		return nil, err
	}
	// Never trust a saved lease longer than the node would grant today.
	return &decided{grant: g, want: want, leaseUntil: minTime(sg.LeaseUntil, now.Add(n.cfg.Lease.Max))}, nil
}

// queueSave hands the grant to the saver (the newest wins): the loop never
// waits on the disk.
func (n *Node) queueSave(d *decided) {
	if n.cfg.Node.StateFile == "" {
		return
	}
	sg := savedGrant{Site: d.grant.Site, Node: d.grant.Node, Epoch: d.grant.Epoch, Seq: d.grant.Seq, LeaseUntil: d.leaseUntil.UTC()}
	for i, mw := range d.want {
		if mw != 0 {
			sg.Caps = append(sg.Caps, wire.GPUCap{UUID: n.info[i].UUID, W: float64(mw) / 1000})
		}
	}
	select {
	case n.saves <- sg:
	default:
		select {
		case <-n.saves:
		default:
		}
		n.saves <- sg
	}
}

func (n *Node) saveLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			// Keep the newest grant even when the stop came right after it.
			select {
			case sg := <-n.saves:
				n.write(sg)
			default:
			}
			return
		case sg := <-n.saves:
			n.write(sg)
		}
	}
}

// write replaces the state file atomically: a crash leaves the old file
// or the new one, never half of one.
func (n *Node) write(sg savedGrant) {
	path := n.cfg.Node.StateFile
	b, _ := json.Marshal(sg)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".grant-*")
	if err == nil {
		_, err = tmp.Write(b)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
		if err != nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		n.log.Warn("last grant not saved; a restart will start at the safe cap", "file", path, "err", err)
	}
}
