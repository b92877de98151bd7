package gpufleet

import (
	"log/slog"
	"sync"

	"github.com/siteagent/siteagent/node/wire"
)

// Hub shares the site's one MQTT connection between its GPU fleets: one
// subscription per kind of node message (a second subscription to the
// same filter would replace the first), each message routed to the fleet
// that owns the node. A node that no fleet owns is logged once.
type Hub struct {
	client     Client
	root, site string
	log        *slog.Logger

	mu        sync.Mutex
	fleets    []*Fleet
	unclaimed map[string]bool
}

// NewHub subscribes to every node's telemetry and acknowledgements of the
// client's site. Subscriptions made before the client starts are made on
// connect.
func NewHub(client Client, log *slog.Logger) (*Hub, error) {
	if log == nil {
		log = slog.Default()
	}
	t := client.Topics()
	h := &Hub{client: client, root: t.Root, site: t.Site, log: log, unclaimed: map[string]bool{}}
	if err := client.Subscribe(wire.Filter(h.root, h.site, wire.KindTelemetry), 0, h.route); err != nil {
		return nil, err
	}
	if err := client.Subscribe(wire.Filter(h.root, h.site, wire.KindAck), 1, h.route); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *Hub) add(f *Fleet) {
	h.mu.Lock()
	h.fleets = append(h.fleets, f)
	h.mu.Unlock()
}

// route hands a node message to the first fleet (in group order) that
// owns the node.
func (h *Hub) route(topic string, payload []byte) {
	id, kind, ok := wire.Parse(h.root, h.site, topic)
	if !ok {
		return
	}
	h.mu.Lock()
	var owner *Fleet
	for _, f := range h.fleets {
		if f.cfg.matches(id) {
			owner = f
			break
		}
	}
	if owner == nil && !h.unclaimed[id] {
		h.unclaimed[id] = true
		h.log.Warn("GPU node reports but no gpu_nodes group names it; ignored", "node", id)
	}
	h.mu.Unlock()
	if owner == nil {
		return
	}
	switch kind {
	case wire.KindTelemetry:
		owner.onTelemetry(id, payload)
	case wire.KindAck:
		owner.onAck(id, payload)
	}
}
