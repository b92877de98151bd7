// Package whatsminer drives MicroBT Whatsminers through btminer's network
// API, in both of its generations:
//
//   - API v3 (firmware from 2024 on): TCP 4433, each message a 4-byte
//     little-endian length and JSON. Reads are plain; writes (set.*) carry a
//     timestamp, an account and a token, the first 8 base64 characters of
//     SHA-256(command + password + salt + timestamp), where the salt comes
//     from get.device.info. Sleep is set.miner.service stop, wake is start,
//     and set.miner.power_limit sets a power limit in watts.
//   - API v2: TCP 4028, one JSON request per connection. Reads (summary,
//     status, devs, get_psu…) are plain; privileged commands need a token
//     from get_token and travel AES-256-ECB encrypted in {"enc":1,"data":…}.
//     Sleep is power_off (hashboards off, control board up), wake power_on.
//     v2's power limit (adjust_power_limit) reboots the miner, so this
//     driver refuses it: SetPowerTarget answers miner.ErrUnsupported.
//
// A Driver serves every Whatsminer of a fleet and is safe for concurrent
// use. It caches per host what the protocol lets it reuse: the v3 salt, the
// v2 token (btminer keeps one 30 minutes and hands out at most 32 per client
// address), and in auto mode which API the host speaks. A rejected cached
// salt or token is fetched again once, so an expired token costs one extra
// round trip and never a failed command.
package whatsminer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
)

// API selects the protocol generation.
type API uint8

const (
	// APIAuto tries API v3 and falls back to v2 where port 4433 refuses the
	// connection; the answer is remembered per host and v2 hosts are probed
	// again after Options.ReprobeAfter (a firmware upgrade brings v3).
	APIAuto API = iota
	APIv3
	APIv2
)

func (a API) String() string {
	switch a {
	case APIv3:
		return "v3"
	case APIv2:
		return "v2"
	}
	return "auto"
}

// Options configure a Driver. The zero value is usable for reads; writes
// need Password.
type Options struct {
	API API
	// Account that signs API v3 writes: "super" unless set. (API v2 has
	// one privileged account, admin.)
	Account string
	// Password of Account (v3) and of admin (v2). Load it from a credential
	// file or systemd credential; never put it in the TOML.
	Password string
	// PortV3 and PortV2 are used when a miner's Host carries no port:
	// 4433 and 4028 unless set. A port in Host overrides them for
	// whichever API the host speaks.
	PortV3, PortV2 int
	// IOTimeout bounds one exchange when the caller's context allows
	// longer: 10 s unless set (btminer drops idle clients after 10 s).
	IOTimeout time.Duration
	// TokenTTL is how long a v2 token is reused: 25 min unless set; the
	// miner keeps one for 30 min.
	TokenTTL time.Duration
	// ReprobeAfter is how long APIAuto keeps a host on v2 before trying v3
	// again: 10 min unless set.
	ReprobeAfter time.Duration
	// Dialer, when set, opens the TCP connections.
	Dialer *net.Dialer
	// Now is the clock for v3 timestamps and token ages; time.Now unless set.
	Now func() time.Time
}

const (
	DefaultPortV3 = 4433
	DefaultPortV2 = 4028
)

// ErrAuth marks a refused login or write: wrong password, write access not
// enabled, or an account without rights. Retrying will not help. It wraps
// miner.ErrRefused.
var ErrAuth = fmt.Errorf("%w: authentication", miner.ErrRefused)

// Driver implements miner.Driver for Whatsminers.
type Driver struct {
	o     Options
	hosts sync.Map // Miner.Host → *hostState
}

var _ miner.Driver = (*Driver)(nil)

// New returns a Driver with o's zero fields set to their defaults.
func New(o Options) *Driver {
	if o.Account == "" {
		o.Account = "super"
	}
	if o.PortV3 == 0 {
		o.PortV3 = DefaultPortV3
	}
	if o.PortV2 == 0 {
		o.PortV2 = DefaultPortV2
	}
	if o.IOTimeout <= 0 {
		o.IOTimeout = 10 * time.Second
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = 25 * time.Minute
	}
	if o.ReprobeAfter <= 0 {
		o.ReprobeAfter = 10 * time.Minute
	}
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Driver{o: o}
}

// Family is miner.Whatsminer.
func (d *Driver) Family() miner.Family { return miner.Whatsminer }

// hostState is what the driver remembers about one miner.
type hostState struct {
	mu      sync.Mutex
	api     API       // APIv3 or APIv2 once known; APIAuto while not
	decided time.Time // when api was decided
	salt    string    // v3 salt
	sess    *v2Session
	keySalt string // v2: the salt keyHash was computed with
	keyHash string // v2: MD5-crypt of the password with keySalt
}

func (d *Driver) host(h string) *hostState {
	if v, ok := d.hosts.Load(h); ok {
		return v.(*hostState)
	}
	v, _ := d.hosts.LoadOrStore(h, &hostState{})
	return v.(*hostState)
}

// Forget drops what the driver cached about host (salt, token, API):
// for a miner that was replaced or re-flashed.
func (d *Driver) Forget(host string) { d.hosts.Delete(host) }

// Sleep stops hashing: set.miner.service stop (v3) or power_off (v2).
// Both keep the control board up and the API reachable.
func (d *Driver) Sleep(ctx context.Context, m miner.Miner) error {
	return d.run(ctx, m, "sleep",
		func(c *v3Conn, hs *hostState) error { return d.v3Set(c, hs, "set.miner.service", "stop") },
		func(ctx context.Context, hs *hostState, addr string) error {
			return d.v2Command(ctx, hs, addr, "power_off", map[string]string{"respbefore": "true"})
		})
}

// Wake starts hashing again: set.miner.service start (v3) or power_on (v2).
func (d *Driver) Wake(ctx context.Context, m miner.Miner) error {
	return d.run(ctx, m, "wake",
		func(c *v3Conn, hs *hostState) error { return d.v3Set(c, hs, "set.miner.service", "start") },
		func(ctx context.Context, hs *hostState, addr string) error {
			return d.v2Command(ctx, hs, addr, "power_on", nil)
		})
}

// errV2PowerLimit explains why API v2 gets no power target.
var errV2PowerLimit = fmt.Errorf("%w: Whatsminer API v2 applies a power limit (adjust_power_limit) by rebooting the miner, "+
	"which takes it offline for minutes and is no way to shed or cap load; shed it with Sleep, or upgrade it to API v3 firmware", miner.ErrUnsupported)

// SetPowerTarget sets the power limit in watts with set.miner.power_limit
// (v3). MicroBT documents that btminer restarts to apply a new limit, so the
// miner hashes at reduced power for a while after the call: use it for
// planned caps, and Sleep for fast sheds. On API v2 it returns
// miner.ErrUnsupported: v2's power limit reboots the miner.
func (d *Driver) SetPowerTarget(ctx context.Context, m miner.Miner, watts float64) error {
	if math.IsNaN(watts) || watts < 1 || watts > 99999 {
		return &miner.Error{Host: m.Host, Op: "power", Err: fmt.Errorf("power target %g W is outside 1…99999 W", watts)}
	}
	w := int(math.Round(watts))
	return d.run(ctx, m, "power",
		func(c *v3Conn, hs *hostState) error { return d.v3Set(c, hs, "set.miner.power_limit", w) },
		func(context.Context, *hostState, string) error { return errV2PowerLimit })
}

// Poll reads state, hashrate, power, temperature and power limit: over v3
// get.device.info (miner) and get.miner.status (summary) on one connection;
// over v2 the summary and status commands.
func (d *Driver) Poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	var t miner.Telemetry
	err := d.run(ctx, m, "poll",
		func(c *v3Conn, hs *hostState) (err error) { t, err = d.v3Poll(c); return err },
		func(ctx context.Context, hs *hostState, addr string) (err error) {
			t, err = d.v2Poll(ctx, addr)
			return err
		})
	return t, err
}

// run picks the host's API, opens the connection and wraps any failure in a
// *miner.Error naming the host.
func (d *Driver) run(ctx context.Context, m miner.Miner, op string,
	v3 func(*v3Conn, *hostState) error,
	v2 func(context.Context, *hostState, string) error,
) error {
	hs := d.host(m.Host)
	api := d.o.API
	if api == APIAuto {
		hs.mu.Lock()
		api = hs.api
		if api == APIv2 && d.o.Now().Sub(hs.decided) >= d.o.ReprobeAfter {
			api = APIAuto
		}
		hs.mu.Unlock()
	}
	var err error
	switch api {
	case APIv2:
		err = v2(ctx, hs, d.addr(m.Host, d.o.PortV2))
	default:
		var c *v3Conn
		c, err = d.dialV3(ctx, d.addr(m.Host, d.o.PortV3))
		if err == nil {
			err = v3(c, hs)
			c.close()
			if d.o.API == APIAuto {
				d.decide(hs, APIv3)
			}
		} else if api == APIAuto && errors.Is(err, syscall.ECONNREFUSED) {
			// Nothing listens on 4433: pre-2024 firmware, API v2 only. (A
			// host known to speak v3 is only unreachable: btminer may be
			// restarting, and v2 is no substitute for it.)
			d.decide(hs, APIv2)
			err = v2(ctx, hs, d.addr(m.Host, d.o.PortV2))
		}
	}
	if err != nil {
		if cerr := ctxErr(ctx); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
		return &miner.Error{Host: m.Host, Op: op, Err: err}
	}
	return nil
}

// ctxErr is ctx's error, or DeadlineExceeded once its deadline has passed:
// the connection's deadline, set to the context's, can fire a moment before
// the context's own timer.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

func (d *Driver) decide(hs *hostState, api API) {
	hs.mu.Lock()
	if hs.api != api {
		hs.salt, hs.sess = "", nil
	}
	hs.api, hs.decided = api, d.o.Now()
	hs.mu.Unlock()
}

// addr is host:port, with the host's own port when it has one.
func (d *Driver) addr(host string, port int) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// deadline is the earlier of the context's deadline and now+IOTimeout.
func (d *Driver) deadline(ctx context.Context) time.Time {
	dl := time.Now().Add(d.o.IOTimeout)
	if c, ok := ctx.Deadline(); ok && c.Before(dl) {
		dl = c
	}
	return dl
}

// The fleet tells failures apart by the miner package's classes: each
// error below wraps one of them and keeps the cause.

// unreachable: no connection, no reply, a timeout, a reply cut off.
func unreachable(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", miner.ErrUnreachable, what, err)
}

// garbled: a reply that cannot be trusted.
func garbled(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", miner.ErrGarbled, what, err)
}

// refused: the miner understood and said no.
func refused(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{miner.ErrRefused}, args...)...)
}

func dialErr(addr string, err error) error { return unreachable("connect "+addr, err) }

// watch makes a connection's pending I/O fail when ctx ends, so a
// cancelled caller is never held by a silent miner.
func watch(ctx context.Context, c net.Conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}
