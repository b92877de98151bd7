package braiins

import (
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/siteagent/siteagent/drivers/miner/braiins/bospb"
)

// FuzzTelemetry: any bytes the four poll replies decode from give either
// an error or finite, plausible telemetry, and never a panic. The corpus
// in testdata/fuzz holds real-shaped replies.
func FuzzTelemetry(f *testing.F) {
	m := func(msg proto.Message) []byte { b, _ := proto.Marshal(msg); return b }
	f.Add(m(&bospb.GetMinerDetailsResponse{Status: bospb.MinerStatus_MINER_STATUS_NORMAL}),
		m(&bospb.GetMinerStatsResponse{MinerStats: &bospb.WorkSolverStats{RealHashrate: &bospb.RealHashrate{Last_5S: &bospb.GigaHashrate{GigahashPerSecond: 140000}}},
			PowerStats: &bospb.MinerPowerStats{ApproximatedConsumption: &bospb.Power{Watt: 3010}}}),
		m(&bospb.GetCoolingStateResponse{HighestTemperature: &bospb.TemperatureSensor{Temperature: &bospb.Temperature{DegreeC: 71}}}),
		m(&bospb.GetTunerStateResponse{ModeState: &bospb.GetTunerStateResponse_PowerTargetModeState{PowerTargetModeState: &bospb.PowerTargetModeState{CurrentTarget: &bospb.Power{Watt: 3010}}}}))
	f.Fuzz(func(t *testing.T, a, b, c, d []byte) {
		var det bospb.GetMinerDetailsResponse
		var stats bospb.GetMinerStatsResponse
		var cool bospb.GetCoolingStateResponse
		var tuner bospb.GetTunerStateResponse
		for _, x := range []struct {
			data []byte
			msg  proto.Message
		}{{a, &det}, {b, &stats}, {c, &cool}, {d, &tuner}} {
			if proto.Unmarshal(x.data, x.msg) != nil {
				return // the gRPC layer reports these as garbled
			}
		}
		tm, err := telemetryFrom(&det, &stats, &cool, &tuner)
		if err != nil {
			return
		}
		for _, v := range []float64{tm.HashrateTHs, tm.PowerW, tm.PowerTargetW, tm.MaxTempC} {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < -40 || v > 1e6 {
				t.Fatalf("accepted an untrustworthy figure: %+v", tm)
			}
		}
	})
}
