// Package braiins drives miners running Braiins OS+ through its public
// gRPC API on TCP 50051 (github.com/braiins/bos-plus-api), with the legacy
// BOSminer API on TCP 4028 (the cgminer API plus "pause" and "resume") as
// the fallback for firmware without the gRPC API or with it disabled.
//
// Authentication: AuthenticationService/Login with the miner's user and
// password returns a token in the "authorization" response header; every
// other call carries it in the "authorization" request metadata. The
// driver keeps one token per miner and logs in again when a call comes
// back Unauthenticated (the token expired or the miner rebooted).
//
// Shedding: ActionsService/PauseMining is the fastest command: BOSminer
// stops hashing and powers the hashboards down over the quick-ramping
// "down" time (seconds), keeping the control board and fans (which spin
// down) alive: tens of watts. ResumeMining powers up over the quick-
// ramping "up" time; the driver sets both with
// PerformanceService/SetQuickRamping (Driver.QuickRamping) the first time
// it polls each miner, so that an event does not pay for it. Power targets
// use PerformanceService/SetPowerTarget (save and apply): the tuner moves
// to the new target without a reboot.
//
// Telemetry: MinerService/GetMinerDetails (status NORMAL or PAUSED),
// GetMinerStats (hashrate, approximated power: the firmware's estimate),
// CoolingService/GetCoolingState (hottest sensor) and
// PerformanceService/GetTunerState (current power target), four calls on
// one HTTP/2 connection.
//
// The protobuf messages are the subset declared in bospb/bos.proto; the
// service methods are called by name (see methods below), so no generated
// gRPC stubs are needed.
package braiins

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/braiins/bospb"
	"github.com/siteagent/siteagent/drivers/miner/cgminer"
)

// Ports of the two APIs.
const (
	DefaultPort       = "50051"
	DefaultLegacyPort = "4028"
)

// Full method names of the gRPC calls used (package braiins.bos.v1).
const (
	MethodLogin           = "/braiins.bos.v1.AuthenticationService/Login"
	MethodPauseMining     = "/braiins.bos.v1.ActionsService/PauseMining"
	MethodResumeMining    = "/braiins.bos.v1.ActionsService/ResumeMining"
	MethodSetPowerTarget  = "/braiins.bos.v1.PerformanceService/SetPowerTarget"
	MethodSetQuickRamping = "/braiins.bos.v1.PerformanceService/SetQuickRamping"
	MethodGetTunerState   = "/braiins.bos.v1.PerformanceService/GetTunerState"
	MethodGetMinerDetails = "/braiins.bos.v1.MinerService/GetMinerDetails"
	MethodGetMinerStats   = "/braiins.bos.v1.MinerService/GetMinerStats"
	MethodGetCoolingState = "/braiins.bos.v1.CoolingService/GetCoolingState"
)

// Ramping is the quick-ramping setting, in seconds.
type Ramping struct {
	UpS, DownS uint32
}

// Driver is the Braiins OS+ family. Use New.
type Driver struct {
	User, Password string
	// QuickRamping, when set, is applied to each miner once, at its first
	// poll.
	QuickRamping *Ramping
	// Legacy speaks the BOSminer API for the fallback.
	Legacy cgminer.Client
	// LegacyPort of the BOSminer API (4028).
	LegacyPort string

	conns sync.Map // host -> *hostConn
}

// New returns a driver that logs in as user with password.
func New(user, password string) *Driver {
	return &Driver{User: user, Password: password, LegacyPort: DefaultLegacyPort}
}

var _ miner.Driver = (*Driver)(nil)

// Family implements miner.Driver.
func (d *Driver) Family() miner.Family { return miner.Braiins }

type hostConn struct {
	mu     sync.Mutex
	cc     *grpc.ClientConn
	token  string
	ramped bool
}

func (d *Driver) host(host string) (*hostConn, error) {
	if v, ok := d.conns.Load(host); ok {
		return v.(*hostConn), nil
	}
	// The connection is opened lazily by the first call and closed again
	// after a minute idle, so a fleet of thousands keeps few sockets.
	cc, err := grpc.NewClient(cgminer.WithPort(host, DefaultPort),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithIdleTimeout(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", miner.ErrUnreachable, err)
	}
	v, loaded := d.conns.LoadOrStore(host, &hostConn{cc: cc})
	if loaded {
		cc.Close()
	}
	return v.(*hostConn), nil
}

// Close closes every connection.
func (d *Driver) Close() {
	d.conns.Range(func(k, v any) bool {
		v.(*hostConn).cc.Close()
		d.conns.Delete(k)
		return true
	})
}

// classify maps a gRPC status to the fleet's error kinds.
func classify(method string, err error) error {
	st, _ := status.FromError(err)
	short := method[strings.LastIndexByte(method, '/')+1:]
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return fmt.Errorf("%w: %s: %s", miner.ErrUnreachable, short, st.Message())
	case codes.Internal, codes.DataLoss, codes.Unknown:
		return fmt.Errorf("%w: %s: %s", miner.ErrGarbled, short, st.Message())
	}
	return fmt.Errorf("%w: %s: %s: %s", miner.ErrRefused, short, st.Code(), st.Message())
}

// fallsBack reports whether an error means the gRPC API is not there (as
// opposed to there and saying no).
func fallsBack(err error) bool {
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.Unimplemented
}

// call invokes method with the miner's token, logging in first when there
// is none and once more when the token was refused.
func (d *Driver) call(ctx context.Context, host, method string, req, resp proto.Message) error {
	hc, err := d.host(host)
	if err != nil {
		return err
	}
	hc.mu.Lock()
	token := hc.token
	hc.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if token == "" {
			if token, err = d.login(ctx, hc); err != nil {
				return err
			}
		}
		err = hc.cc.Invoke(metadata.AppendToOutgoingContext(ctx, "authorization", token), method, req, resp)
		if status.Code(err) == codes.Unauthenticated && attempt == 0 {
			hc.mu.Lock()
			if hc.token == token {
				hc.token = ""
			}
			hc.mu.Unlock()
			token = ""
			continue
		}
		return err
	}
}

func (d *Driver) login(ctx context.Context, hc *hostConn) (string, error) {
	var hdr metadata.MD
	err := hc.cc.Invoke(ctx, MethodLogin, &bospb.LoginRequest{Username: d.User, Password: d.Password}, &bospb.LoginResponse{}, grpc.Header(&hdr))
	if err != nil {
		return "", err
	}
	tokens := hdr.Get("authorization")
	if len(tokens) != 1 || tokens[0] == "" {
		return "", status.Errorf(codes.Internal, "login answered without exactly one authorization token (got %d)", len(tokens))
	}
	hc.mu.Lock()
	hc.token = tokens[0]
	hc.mu.Unlock()
	return tokens[0], nil
}

// Sleep implements miner.Driver with PauseMining, or the legacy "pause".
func (d *Driver) Sleep(ctx context.Context, m miner.Miner) error {
	err := d.call(ctx, m.Host, MethodPauseMining, &bospb.PauseMiningRequest{}, &bospb.PauseMiningResponse{})
	if err == nil {
		return nil
	}
	if fallsBack(err) {
		return d.legacy(ctx, m, "sleep", "pause", err)
	}
	return &miner.Error{Host: m.Host, Op: "sleep", Err: classify(MethodPauseMining, err)}
}

// Wake implements miner.Driver with ResumeMining, or the legacy "resume".
func (d *Driver) Wake(ctx context.Context, m miner.Miner) error {
	err := d.call(ctx, m.Host, MethodResumeMining, &bospb.ResumeMiningRequest{}, &bospb.ResumeMiningResponse{})
	if err == nil {
		return nil
	}
	if fallsBack(err) {
		return d.legacy(ctx, m, "wake", "resume", err)
	}
	return &miner.Error{Host: m.Host, Op: "wake", Err: classify(MethodResumeMining, err)}
}

func (d *Driver) legacyAddr(host string) string {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	port := d.LegacyPort
	if port == "" {
		port = DefaultLegacyPort
	}
	return net.JoinHostPort(h, port)
}

// legacy sends the BOSminer API command after the gRPC API failed with
// grpcErr; when both fail, both reasons are reported.
func (d *Driver) legacy(ctx context.Context, m miner.Miner, op, command string, grpcErr error) error {
	_, err := d.Legacy.CallOK(ctx, d.legacyAddr(m.Host), command)
	if err == nil {
		return nil
	}
	return &miner.Error{Host: m.Host, Op: op, Err: fmt.Errorf("%w (gRPC API: %s)", err, status.Convert(grpcErr).Message())}
}

// SetPowerTarget implements miner.Driver with SetPowerTarget (save and
// apply).
func (d *Driver) SetPowerTarget(ctx context.Context, m miner.Miner, watts float64) error {
	if !(watts >= 100 && watts <= 20_000) {
		return &miner.Error{Host: m.Host, Op: "power", Err: fmt.Errorf("power target %g W is outside 100..20000 W", watts)}
	}
	var resp bospb.SetPowerTargetResponse
	err := d.call(ctx, m.Host, MethodSetPowerTarget, &bospb.SetPowerTargetRequest{
		SaveAction: bospb.SaveAction_SAVE_ACTION_SAVE_AND_APPLY, PowerTarget: &bospb.Power{Watt: uint64(watts)}}, &resp)
	if err != nil {
		return &miner.Error{Host: m.Host, Op: "power", Err: classify(MethodSetPowerTarget, err)}
	}
	if resp.GetPowerTarget() == nil {
		return &miner.Error{Host: m.Host, Op: "power", Err: fmt.Errorf("%w: SetPowerTarget answered without the target it set", miner.ErrGarbled)}
	}
	return nil
}

// Poll implements miner.Driver over the gRPC API, or the legacy API when
// the gRPC API is not there.
func (d *Driver) Poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	t, err := d.poll(ctx, m)
	if err == nil {
		return t, nil
	}
	if fallsBack(err) {
		lt, lerr := (&cgminer.Driver{Client: d.Legacy}).Poll(ctx, miner.Miner{Host: d.legacyAddr(m.Host), Family: miner.Braiins})
		if lerr == nil {
			return lt, nil
		}
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: fmt.Errorf("%w (gRPC API: %s)", errors.Unwrap(lerr), status.Convert(err).Message())}
	}
	var ge garbled
	if errors.As(err, &ge) {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: fmt.Errorf("%w: %s", miner.ErrGarbled, ge.msg)}
	}
	return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: classify("poll", err)}
}

type garbled struct{ msg string }

func (g garbled) Error() string { return g.msg }

func (d *Driver) poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	t := miner.Telemetry{At: time.Now()}
	if d.QuickRamping != nil {
		if err := d.ramp(ctx, m.Host); err != nil {
			return t, err
		}
	}
	var det bospb.GetMinerDetailsResponse
	if err := d.call(ctx, m.Host, MethodGetMinerDetails, &bospb.GetMinerDetailsRequest{}, &det); err != nil {
		return t, err
	}
	var stats bospb.GetMinerStatsResponse
	if err := d.call(ctx, m.Host, MethodGetMinerStats, &bospb.GetMinerStatsRequest{}, &stats); err != nil {
		return t, err
	}
	var cool bospb.GetCoolingStateResponse
	if err := d.call(ctx, m.Host, MethodGetCoolingState, &bospb.GetCoolingStateRequest{}, &cool); err != nil {
		return t, err
	}
	var tuner bospb.GetTunerStateResponse
	if err := d.call(ctx, m.Host, MethodGetTunerState, &bospb.GetTunerStateRequest{}, &tuner); err != nil {
		return t, err
	}
	return telemetryFrom(&det, &stats, &cool, &tuner)
}

// telemetryFrom checks the four replies of a poll and builds telemetry;
// a value it cannot trust is an error, never a guess.
func telemetryFrom(det *bospb.GetMinerDetailsResponse, stats *bospb.GetMinerStatsResponse, cool *bospb.GetCoolingStateResponse, tuner *bospb.GetTunerStateResponse) (miner.Telemetry, error) {
	t := miner.Telemetry{At: time.Now()}
	switch det.GetStatus() {
	case bospb.MinerStatus_MINER_STATUS_PAUSED:
		t.Sleeping = true
	case bospb.MinerStatus_MINER_STATUS_NORMAL, bospb.MinerStatus_MINER_STATUS_NOT_STARTED,
		bospb.MinerStatus_MINER_STATUS_SUSPENDED, bospb.MinerStatus_MINER_STATUS_RESTRICTED:
	default:
		return t, garbled{fmt.Sprintf("GetMinerDetails: unknown miner status %v", det.GetStatus())}
	}
	rh := stats.GetMinerStats().GetRealHashrate()
	if rh.GetLast_5S() == nil {
		return t, garbled{"GetMinerStats: no 5 s hashrate"}
	}
	ghs := rh.GetLast_5S().GetGigahashPerSecond()
	if ghs != ghs || ghs < 0 || ghs > 1e8 {
		return t, garbled{fmt.Sprintf("GetMinerStats: implausible hashrate %g GH/s", ghs)}
	}
	t.HashrateTHs = ghs / 1000
	t.Mining = t.HashrateTHs > 0 && !t.Sleeping
	if p := stats.GetPowerStats().GetApproximatedConsumption(); p != nil {
		if p.GetWatt() > 20_000 {
			return t, garbled{fmt.Sprintf("GetMinerStats: implausible consumption %d W", p.GetWatt())}
		}
		t.PowerW, t.PowerKnown, t.PowerEstimated = float64(p.GetWatt()), true, true
	}
	if ht := cool.GetHighestTemperature().GetTemperature(); ht != nil {
		c := ht.GetDegreeC()
		if c == c && c > -40 && c < 150 {
			t.MaxTempC = c
		}
	}
	if pt := tuner.GetPowerTargetModeState().GetCurrentTarget(); pt != nil {
		if pt.GetWatt() > 20_000 {
			return t, garbled{fmt.Sprintf("GetTunerState: implausible power target %d W", pt.GetWatt())}
		}
		t.PowerTargetW = float64(pt.GetWatt())
	}
	return t, nil
}

// ramp applies the quick-ramping setting once per miner.
func (d *Driver) ramp(ctx context.Context, host string) error {
	hc, err := d.host(host)
	if err != nil {
		return err
	}
	hc.mu.Lock()
	done := hc.ramped
	hc.mu.Unlock()
	if done {
		return nil
	}
	var resp bospb.QuickRampingResponse
	err = d.call(ctx, host, MethodSetQuickRamping, &bospb.SetQuickRampingRequest{
		SaveAction: bospb.SaveAction_SAVE_ACTION_SAVE_AND_APPLY, UpS: d.QuickRamping.UpS, DownS: d.QuickRamping.DownS}, &resp)
	if status.Code(err) == codes.Unimplemented {
		err = nil // firmware before quick ramping: nothing to set
	}
	if err != nil {
		return err
	}
	hc.mu.Lock()
	hc.ramped = true
	hc.mu.Unlock()
	return nil
}
