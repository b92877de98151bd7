package opcua

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	gopcua "github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// nodeRef is a node id as written in the site file. One with a namespace
// URI is resolved against the server's namespace array after connecting,
// because namespace indexes may differ between servers and restarts.
type nodeRef struct {
	uri  string // "" when the namespace is given by index
	rest string // "s=Chiller1.Power" when uri is set
	id   *ua.NodeID
}

func parseNode(s string) (nodeRef, error) {
	const hint = `write e.g. "ns=2;s=Chiller1.Power", "ns=3;i=1042" or "nsu=urn:vendor:bms;s=Chiller1.Power"`
	if strings.HasPrefix(s, "nsu=") {
		uri, rest, ok := strings.Cut(strings.TrimPrefix(s, "nsu="), ";")
		if !ok || uri == "" || rest == "" {
			return nodeRef{}, fmt.Errorf("node %q: a namespace URI needs an identifier after ';'; %s", s, hint)
		}
		if _, err := ua.ParseNodeID("ns=1;" + rest); err != nil {
			return nodeRef{}, fmt.Errorf("node %q: %v; %s", s, err, hint)
		}
		return nodeRef{uri: uri, rest: rest}, nil
	}
	if !strings.HasPrefix(s, "ns=") && !strings.Contains(s, "=") {
		// ParseNodeID would read a bare word as a string id in
		// namespace 0, which is almost never what was meant.
		return nodeRef{}, fmt.Errorf("node %q has no identifier type; %s", s, hint)
	}
	n, err := ua.ParseNodeID(s)
	if err != nil {
		return nodeRef{}, fmt.Errorf("node %q: %v; %s", s, err, hint)
	}
	return nodeRef{id: n}, nil
}

// resolve returns the node id, looking a namespace URI up in ns.
func (r nodeRef) resolve(ns []string) (*ua.NodeID, error) {
	if r.uri == "" {
		return r.id, nil
	}
	for i, u := range ns {
		if u == r.uri {
			return ua.ParseNodeID("ns=" + strconv.Itoa(i) + ";" + r.rest)
		}
	}
	return nil, fmt.Errorf("the server has no namespace %q (it has %s)", r.uri, strings.Join(ns, ", "))
}

// pathElem is one step of a browse path: a browse name, with its
// namespace index or ns < 0 for any namespace.
type pathElem struct {
	ns   int
	name string
}

func (e pathElem) String() string {
	if e.ns < 0 {
		return e.name
	}
	return strconv.Itoa(e.ns) + ":" + e.name
}

func parsePath(s string) ([]pathElem, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "/"), "Objects/")
	if t == "" {
		return nil, fmt.Errorf("path %q is empty; write the browse names from the Objects folder, e.g. \"2:BMS/2:Battery/2:SoC\"", s)
	}
	var out []pathElem
	for _, part := range strings.Split(t, "/") {
		e := pathElem{ns: -1, name: part}
		if i := strings.IndexByte(part, ':'); i > 0 {
			if n, err := strconv.Atoi(part[:i]); err == nil {
				if n < 0 || n > 65535 {
					return nil, fmt.Errorf("path %q: namespace index %d is outside 0..65535", s, n)
				}
				e = pathElem{ns: n, name: part[i+1:]}
			}
		}
		if e.name == "" {
			return nil, fmt.Errorf("path %q has an empty step; write browse names separated by '/', e.g. \"2:BMS/2:Battery/2:SoC\"", s)
		}
		out = append(out, e)
	}
	return out, nil
}

func formatPath(p []pathElem) string {
	parts := make([]string, len(p))
	for i, e := range p {
		parts[i] = e.String()
	}
	return strings.Join(parts, "/")
}

// child is one node found by browsing.
type child struct {
	id    *ua.NodeID
	name  *ua.QualifiedName
	class ua.NodeClass
}

// browseChildren lists the nodes below n by hierarchical references,
// following continuation points.
func browseChildren(ctx context.Context, c *gopcua.Client, n *ua.NodeID) ([]child, error) {
	res, err := c.Browse(ctx, &ua.BrowseRequest{
		View: &ua.ViewDescription{ViewID: ua.NewTwoByteNodeID(0)},
		NodesToBrowse: []*ua.BrowseDescription{{
			NodeID:          n,
			BrowseDirection: ua.BrowseDirectionForward,
			ReferenceTypeID: ua.NewNumericNodeID(0, id.HierarchicalReferences),
			IncludeSubtypes: true,
			ResultMask:      uint32(ua.BrowseResultMaskAll),
		}},
	})
	if err != nil {
		return nil, err
	}
	if len(res.Results) != 1 {
		return nil, fmt.Errorf("browse of %s: the server answered %d results for 1 node", n, len(res.Results))
	}
	r := res.Results[0]
	var out []child
	for {
		if severity(r.StatusCode) == sevBad {
			return nil, fmt.Errorf("browse of %s: %s", n, statusName(r.StatusCode))
		}
		for _, ref := range r.References {
			if ref == nil || ref.NodeID == nil || !ref.IsForward {
				continue
			}
			out = append(out, child{id: ref.NodeID.NodeID, name: ref.BrowseName, class: ref.NodeClass})
		}
		if len(r.ContinuationPoint) == 0 {
			return out, nil
		}
		next, err := c.BrowseNext(ctx, &ua.BrowseNextRequest{ContinuationPoints: [][]byte{r.ContinuationPoint}})
		if err != nil {
			return nil, err
		}
		if len(next.Results) != 1 {
			return nil, errors.New("browse next: no result")
		}
		r = next.Results[0]
	}
}

// walker resolves browse paths from the Objects folder, remembering what
// it browsed so that points under one folder cost one request.
type walker struct {
	c     *gopcua.Client
	cache map[string][]child
}

func (w *walker) resolve(ctx context.Context, p []pathElem) (*ua.NodeID, error) {
	cur := ua.NewNumericNodeID(0, id.ObjectsFolder)
	for i, e := range p {
		key := cur.String()
		kids, ok := w.cache[key]
		if !ok {
			var err error
			if kids, err = browseChildren(ctx, w.c, cur); err != nil {
				return nil, err
			}
			w.cache[key] = kids
		}
		var next *ua.NodeID
		var names []string
		for _, k := range kids {
			if k.name == nil {
				continue
			}
			names = append(names, fmt.Sprintf("%d:%s", k.name.NamespaceIndex, k.name.Name))
			if k.name.Name == e.name && (e.ns < 0 || int(k.name.NamespaceIndex) == e.ns) && next == nil {
				next = k.id
			}
		}
		if next == nil {
			where := "the Objects folder"
			if i > 0 {
				where = formatPath(p[:i])
			}
			if len(names) > 8 {
				names = append(names[:8], "…")
			}
			return nil, errNotFound{fmt.Sprintf("no %s under %s (it holds %s)", e, where, strings.Join(names, ", "))}
		}
		cur = next
	}
	return cur, nil
}
