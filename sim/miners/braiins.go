package miners

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/siteagent/siteagent/drivers/miner/braiins/bospb"
)

// Braiins OS+ as the simulator speaks it: the public gRPC API (package
// braiins.bos.v1, github.com/braiins/bos-plus-api) on one port, and the
// legacy BOSminer API (cgminer API plus "pause" and "resume") on another,
// both on each miner's loopback address.
//
//   - AuthenticationService/Login checks user and password and returns a
//     token in the "authorization" response header; every other call must
//     carry a live token in its "authorization" metadata or gets
//     Unauthenticated. Tokens expire after TokenTTL.
//   - ActionsService/PauseMining and ResumeMining answer at once
//     (already_paused / already_mining) and start the transition: a pause
//     powers the boards down over the quick-ramping down time, a resume
//     powers them up over the up time.
//   - PerformanceService/SetQuickRamping sets those times;
//     SetPowerTarget moves the tuner's target (the power follows over the
//     up time); GetTunerState reports it.
//   - MinerService/GetMinerDetails reports MINER_STATUS_NORMAL or
//     MINER_STATUS_PAUSED; GetMinerStats the 5 s hashrate and the
//     approximated consumption; CoolingService/GetCoolingState the
//     hottest sensor.
//   - Legacy "pause"/"resume" answer a STATUS section only (the shape of
//     their detail section is not published; the simulator sends none).
//
// Which command sheds fastest: PauseMining (one call once logged in; the
// boards are off after the quick-ramping down time, a few seconds). Asleep
// (paused) the miner keeps its control board and, for a while, its fans:
// ~25 W here. Waking takes the quick-ramping up time plus a few seconds
// for the boards to start: ~35 s with the simulator's defaults.

// BraiinsConfig describes a fleet of Braiins OS+ miners.
type BraiinsConfig struct {
	Miners int
	// Base is the first miner's address (default 127.30.0.1). GRPCPort
	// and LegacyPort are shared (0: free ones).
	Base       netip.Addr
	GRPCPort   int
	LegacyPort int
	// User and Password the miners accept (root / "" unless set).
	User, Password string
	// TokenTTL: a login token's life (1 h unless set).
	TokenTTL time.Duration
	// Physics: an S19 XP on Braiins OS+ unless set. SleepFall and
	// WakeRamp are the quick-ramping down and up times.
	Physics Physics
	// NoGRPC: the gRPC API is disabled (older firmware): only the legacy
	// API answers.
	NoGRPC bool
	Now    func() time.Time
}

// DefaultBraiinsPhysics is an S19 XP on Braiins OS+.
func DefaultBraiinsPhysics() Physics {
	return Physics{RatedW: 3010, SleepW: 25, SleepDelay: time.Second, SleepFall: 5 * time.Second,
		WakeDelay: 5 * time.Second, WakeRamp: 30 * time.Second, HashrateTHs: 140}
}

// BraiinsFleet is a running fleet of simulated Braiins OS+ miners.
type BraiinsFleet struct {
	cfg     BraiinsConfig
	api     *apiServer // legacy API; also holds the faults
	grpcSet *loopbackSet
	servers []*grpc.Server
	miners  []bosMiner
	mu      []sync.Mutex
	tokens  atomic.Uint64
	logins  atomic.Uint64
	calls   sync.Map // method -> *atomic.Uint64
}

type bosMiner struct {
	m       machine
	phys    Physics
	token   string
	expires time.Time
}

const bosDesc = "BOSminer bosminer-plus-tuner 0.9.0-23.10"

// StartBraiins starts the fleet, every miner hashing.
func StartBraiins(cfg BraiinsConfig) (*BraiinsFleet, error) {
	if cfg.Miners < 1 {
		return nil, fmt.Errorf("need at least one miner, got %d", cfg.Miners)
	}
	if !cfg.Base.IsValid() {
		cfg.Base = netip.MustParseAddr("127.30.0.1")
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = DefaultBraiinsPhysics()
	}
	if cfg.User == "" {
		cfg.User = "root"
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = time.Hour
	}
	api, err := newAPIServer(cfg.Base, cfg.Miners, cfg.LegacyPort, cfg.Now)
	if err != nil {
		return nil, err
	}
	f := &BraiinsFleet{cfg: cfg, api: api, miners: make([]bosMiner, cfg.Miners), mu: make([]sync.Mutex, cfg.Miners)}
	now := api.now()
	for i := range f.miners {
		f.miners[i] = bosMiner{m: machine{mode: Mining, since: now, targetW: cfg.Physics.RatedW}, phys: cfg.Physics}
	}
	api.respond = f.legacy
	if !cfg.NoGRPC {
		if f.grpcSet, err = listenLoopback(cfg.Base, cfg.Miners, cfg.GRPCPort); err != nil {
			api.close()
			return nil, err
		}
		for i, ln := range f.grpcSet.lns {
			s := grpc.NewServer(grpc.ForceServerCodec(faultCodec{}))
			for k := range bosServiceDescs {
				s.RegisterService(&bosServiceDescs[k], &bosService{f: f, i: i})
			}
			f.servers = append(f.servers, s)
			go s.Serve(&faultListener{Listener: ln, fault: func() Fault { return api.fault(i) }})
		}
	}
	api.start()
	return f, nil
}

// Addrs lists each miner's gRPC "host:port" (the driver derives the
// legacy address from the host and LegacyPort).
func (f *BraiinsFleet) Addrs() []string {
	if f.grpcSet == nil {
		out := make([]string, len(f.api.set.addrs))
		for i, a := range f.api.set.addrs {
			h, _, _ := net.SplitHostPort(a)
			out[i] = net.JoinHostPort(h, "1") // nothing listens: gRPC is off
		}
		return out
	}
	return f.grpcSet.addrs
}

// LegacyPort is the BOSminer API port.
func (f *BraiinsFleet) LegacyPort() int { return f.api.set.port }

// SetFault gives miner i a fault on both APIs. FaultRefusing refuses the
// login (wrong password) on the gRPC API and resets the legacy API.
func (f *BraiinsFleet) SetFault(i int, fault Fault) { f.api.faults[i].Store(uint32(fault)) }

// SetSlowDelay sets how long a FaultSlow miner takes to answer.
func (f *BraiinsFleet) SetSlowDelay(d time.Duration) { f.api.slowDelay = d }

// Logins counts successful logins.
func (f *BraiinsFleet) Logins() uint64 { return f.logins.Load() }

// Calls counts calls of a gRPC method ("PauseMining") or legacy command
// ("pause").
func (f *BraiinsFleet) Calls(name string) uint64 {
	if c, ok := f.calls.Load(name); ok {
		return c.(*atomic.Uint64).Load()
	}
	return f.api.commandCount(name)
}

// ExpireTokens makes every issued token invalid (a miner reboot).
func (f *BraiinsFleet) ExpireTokens() {
	for i := range f.miners {
		f.mu[i].Lock()
		f.miners[i].token = ""
		f.mu[i].Unlock()
	}
}

// State returns miner i's state now.
func (f *BraiinsFleet) State(i int) MinerState {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	now := f.api.now()
	b := &f.miners[i]
	b.m.settle(&b.phys, now)
	return MinerState{Mode: b.m.mode, PowerW: b.m.powerAt(&b.phys, now), HashrateTHs: b.m.hashrate(&b.phys, now), TargetW: b.m.targetW}
}

// Ramping returns miner i's quick-ramping times.
func (f *BraiinsFleet) Ramping(i int) (up, down time.Duration) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	return f.miners[i].phys.WakeRamp, f.miners[i].phys.SleepFall
}

// Close stops both APIs.
func (f *BraiinsFleet) Close() {
	for _, s := range f.servers {
		s.Stop()
	}
	if f.grpcSet != nil {
		f.grpcSet.close()
	}
	f.api.close()
}

func (f *BraiinsFleet) count(name string) {
	c, _ := f.calls.LoadOrStore(name, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(1)
}

// legacy answers the BOSminer API.
func (f *BraiinsFleet) legacy(i int, command, _ string, now time.Time) ([]byte, bool) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	b := &f.miners[i]
	b.m.settle(&b.phys, now)
	ignoring := f.api.fault(i) == FaultIgnoring
	switch command {
	case "pause":
		if !ignoring {
			b.m.sleep(&b.phys, now)
		}
		return statusReply(now, 'S', 150, "Mining paused", bosDesc), false
	case "resume":
		if !ignoring {
			b.m.wake(&b.phys, now)
		}
		return statusReply(now, 'S', 151, "Mining resumed", bosDesc), false
	case "summary":
		ghs := round(b.m.hashrate(&b.phys, now)*1000, 2)
		return reply(now, 'S', 11, "Summary", bosDesc, map[string]any{"SUMMARY": []any{map[string]any{
			"Elapsed": 86400, "GHS 5s": ghs, "GHS av": ghs, "Accepted": 4000, "Rejected": 2}}}), true
	case "devs":
		return reply(now, 'S', 9, "3 ASC(s)", bosDesc, map[string]any{"DEVS": []any{
			map[string]any{"ASC": 0, "Name": "BC5", "ID": 0, "Enabled": "Y", "Status": "Alive", "Temperature": round(30+35*b.m.powerAt(&b.phys, now)/b.phys.RatedW, 1)}}}), true
	case "stats":
		return reply(now, 'S', 70, "CGMiner stats", bosDesc, map[string]any{"STATS": []any{map[string]any{"Elapsed": 86400, "ID": "BC50"}}}), true
	case "pools":
		return reply(now, 'S', 7, "1 Pool(s)", bosDesc, map[string]any{"POOLS": []any{map[string]any{"POOL": 0, "Status": "Alive", "URL": "stratum2+tcp://pool.example"}}}), true
	case "version":
		return reply(now, 'S', 22, "BOSminer versions", bosDesc, map[string]any{"VERSION": []any{map[string]any{"BOSminer": "0.9.0", "API": "3.7"}}}), true
	}
	return statusReply(now, 'E', 14, "Invalid command", bosDesc), false
}

// bosService implements the gRPC methods for miner i.
type bosService struct {
	f *BraiinsFleet
	i int
}

// garbledReply is answered by faultCodec as bytes that are not a valid
// protobuf message.
type garbledReply struct{}

// faultCodec is the proto codec, except that garbledReply marshals to junk.
type faultCodec struct{}

func (faultCodec) Name() string { return "proto" }
func (faultCodec) Marshal(v any) ([]byte, error) {
	if _, ok := v.(garbledReply); ok {
		return []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x07}, nil
	}
	return proto.Marshal(v.(proto.Message))
}
func (faultCodec) Unmarshal(data []byte, v any) error {
	return proto.Unmarshal(data, v.(proto.Message))
}

var _ encoding.Codec = faultCodec{}

// faultListener applies connection-level faults to the gRPC API: a
// refusing miner's legacy API resets connections, but its gRPC API is up
// and refuses the login (see Login); a dropping miner closes each
// connection after reading from it.
type faultListener struct {
	net.Listener
	fault func() Fault
}

func (l *faultListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.fault() == FaultDropping {
		return &droppingConn{Conn: c}, nil
	}
	return c, nil
}

type droppingConn struct {
	net.Conn
	once sync.Once
}

func (c *droppingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.once.Do(func() { c.Conn.Close() })
	return n, err
}

// enter applies the slow and garbled faults and checks the token; it
// returns the miner locked on success.
func (s *bosService) enter(ctx context.Context, method string, auth bool) (*bosMiner, func(), error) {
	f := s.f
	f.count(method)
	fault := f.api.fault(s.i)
	if fault == FaultSlow && !waitCtx(ctx, f.api.slowDelay) {
		return nil, nil, status.Error(codes.DeadlineExceeded, "slow miner")
	}
	f.mu[s.i].Lock()
	b := &f.miners[s.i]
	unlock := f.mu[s.i].Unlock
	now := f.api.now()
	b.m.settle(&b.phys, now)
	if auth {
		md, _ := metadata.FromIncomingContext(ctx)
		tok := md.Get("authorization")
		if len(tok) != 1 || b.token == "" || tok[0] != b.token || now.After(b.expires) {
			unlock()
			return nil, nil, status.Error(codes.Unauthenticated, "missing or expired authorization token")
		}
	}
	return b, unlock, nil
}

func (s *bosService) garbled() bool { return s.f.api.fault(s.i) == FaultGarbled }

func (s *bosService) login(ctx context.Context, req *bospb.LoginRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "Login", false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s.f.api.fault(s.i) == FaultRefusing || req.GetUsername() != s.f.cfg.User || req.GetPassword() != s.f.cfg.Password {
		return nil, status.Error(codes.Unauthenticated, "invalid username or password")
	}
	b.token = fmt.Sprintf("Bt%08x%06d", s.f.tokens.Add(1)*2654435761, s.i)
	b.expires = s.f.api.now().Add(s.f.cfg.TokenTTL)
	s.f.logins.Add(1)
	grpc.SetHeader(ctx, metadata.Pairs("authorization", b.token))
	return &bospb.LoginResponse{}, nil
}

func (s *bosService) pause(ctx context.Context, _ *bospb.PauseMiningRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "PauseMining", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	already := b.m.mode == Sleeping || b.m.mode == Stopping
	if s.f.api.fault(s.i) != FaultIgnoring {
		b.m.sleep(&b.phys, s.f.api.now())
	}
	if s.garbled() {
		return garbledReply{}, nil
	}
	return &bospb.PauseMiningResponse{AlreadyPaused: already}, nil
}

func (s *bosService) resume(ctx context.Context, _ *bospb.ResumeMiningRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "ResumeMining", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	already := b.m.mode == Mining || b.m.mode == Waking
	if s.f.api.fault(s.i) != FaultIgnoring {
		b.m.wake(&b.phys, s.f.api.now())
	}
	if s.garbled() {
		return garbledReply{}, nil
	}
	return &bospb.ResumeMiningResponse{AlreadyMining: already}, nil
}

func (s *bosService) setPowerTarget(ctx context.Context, req *bospb.SetPowerTargetRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "SetPowerTarget", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	w := float64(req.GetPowerTarget().GetWatt())
	if req.GetPowerTarget() == nil || w < 0.3*b.phys.RatedW || w > 1.2*b.phys.RatedW {
		return nil, status.Errorf(codes.InvalidArgument, "power target %v W outside %.0f..%.0f W", w, 0.3*b.phys.RatedW, 1.2*b.phys.RatedW)
	}
	if s.f.api.fault(s.i) != FaultIgnoring {
		now := s.f.api.now()
		if b.m.mode == Mining {
			b.m.fromW = b.m.powerAt(&b.phys, now)
			b.m.mode, b.m.since = Waking, now.Add(-b.phys.WakeDelay)
		}
		b.m.targetW = w
	}
	if s.garbled() {
		return garbledReply{}, nil
	}
	return &bospb.SetPowerTargetResponse{PowerTarget: &bospb.Power{Watt: uint64(b.m.targetW)}}, nil
}

func (s *bosService) setQuickRamping(ctx context.Context, req *bospb.SetQuickRampingRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "SetQuickRamping", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if req.GetUpS() > 3600 || req.GetDownS() > 3600 {
		return nil, status.Error(codes.InvalidArgument, "quick ramping times must be 0..3600 s")
	}
	b.phys.WakeRamp = time.Duration(req.GetUpS()) * time.Second
	b.phys.SleepFall = time.Duration(req.GetDownS()) * time.Second
	return &bospb.QuickRampingResponse{UpS: req.GetUpS(), DownS: req.GetDownS()}, nil
}

func (s *bosService) tunerState(ctx context.Context, _ *bospb.GetTunerStateRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "GetTunerState", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return &bospb.GetTunerStateResponse{OverallTunerState: bospb.TunerState_TUNER_STATE_STABLE,
		ModeState: &bospb.GetTunerStateResponse_PowerTargetModeState{PowerTargetModeState: &bospb.PowerTargetModeState{
			CurrentTarget: &bospb.Power{Watt: uint64(b.m.targetW)}}}}, nil
}

func (s *bosService) details(ctx context.Context, _ *bospb.GetMinerDetailsRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "GetMinerDetails", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s.garbled() {
		return garbledReply{}, nil
	}
	st := bospb.MinerStatus_MINER_STATUS_NORMAL
	if b.m.mode == Sleeping || b.m.mode == Stopping {
		st = bospb.MinerStatus_MINER_STATUS_PAUSED
	}
	return &bospb.GetMinerDetailsResponse{Uid: fmt.Sprintf("bos%06d", s.i), Hostname: fmt.Sprintf("bos-%d", s.i), BosminerUptimeS: 86400, Status: st}, nil
}

func (s *bosService) stats(ctx context.Context, _ *bospb.GetMinerStatsRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "GetMinerStats", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := s.f.api.now()
	ghs := b.m.hashrate(&b.phys, now) * 1000
	return &bospb.GetMinerStatsResponse{
		MinerStats: &bospb.WorkSolverStats{RealHashrate: &bospb.RealHashrate{Last_5S: &bospb.GigaHashrate{GigahashPerSecond: ghs}},
			NominalHashrate: &bospb.GigaHashrate{GigahashPerSecond: b.phys.HashrateTHs * 1000}},
		PowerStats: &bospb.MinerPowerStats{ApproximatedConsumption: &bospb.Power{Watt: uint64(b.m.powerAt(&b.phys, now) + 0.5)}},
	}, nil
}

func (s *bosService) cooling(ctx context.Context, _ *bospb.GetCoolingStateRequest) (any, error) {
	b, unlock, err := s.enter(ctx, "GetCoolingState", true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	w := b.m.powerAt(&b.phys, s.f.api.now())
	id := uint32(1)
	return &bospb.GetCoolingStateResponse{HighestTemperature: &bospb.TemperatureSensor{Id: &id, Location: bospb.SensorLocation_SENSOR_LOCATION_CHIP,
		Temperature: &bospb.Temperature{DegreeC: 30 + 45*w/b.phys.RatedW + float64(s.i%7)}}}, nil
}

// unary builds a grpc.MethodDesc for a typed handler.
func unary[Req any, PReq interface {
	*Req
	proto.Message
}](name string, h func(s *bosService, ctx context.Context, req PReq) (any, error)) grpc.MethodDesc {
	return grpc.MethodDesc{MethodName: name, Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		req := PReq(new(Req))
		if err := dec(req); err != nil {
			return nil, err
		}
		return h(srv.(*bosService), ctx, req)
	}}
}

// bosServiceDescs are the services the simulator implements, written by
// hand from the published proto (no generated stubs).
var bosServiceDescs = []grpc.ServiceDesc{
	{ServiceName: "braiins.bos.v1.AuthenticationService", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{unary("Login", (*bosService).login)}},
	{ServiceName: "braiins.bos.v1.ActionsService", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{unary("PauseMining", (*bosService).pause), unary("ResumeMining", (*bosService).resume)}},
	{ServiceName: "braiins.bos.v1.PerformanceService", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{unary("SetPowerTarget", (*bosService).setPowerTarget),
			unary("SetQuickRamping", (*bosService).setQuickRamping), unary("GetTunerState", (*bosService).tunerState)}},
	{ServiceName: "braiins.bos.v1.MinerService", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{unary("GetMinerDetails", (*bosService).details), unary("GetMinerStats", (*bosService).stats)}},
	{ServiceName: "braiins.bos.v1.CoolingService", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{unary("GetCoolingState", (*bosService).cooling)}},
}
