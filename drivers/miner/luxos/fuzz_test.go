package luxos

import (
	"math"
	"testing"

	"github.com/siteagent/siteagent/drivers/miner/cgminer"
)

// FuzzTelemetry: no reply makes the LuxOS reader panic, and what it
// accepts is finite and plausible. The corpus in testdata/fuzz holds
// replies in LuxOS's shape and their malformations.
func FuzzTelemetry(f *testing.F) {
	f.Add([]byte(`{"summary":[{"STATUS":[{"Code":11,"Msg":"Summary","STATUS":"S","When":1}],"SUMMARY":[{"GHS 5s":104000}],"id":1}],"power":[{"POWER":[{"PSU":true,"Watts":3250}],"STATUS":[{"STATUS":"S"}],"id":1}],"config":[{"CONFIG":[{"CurtailMode":"None","ActualPowerTarget":3250}],"STATUS":[{"STATUS":"S"}],"id":1}],"stats":[{"STATS":[{"CGMiner":"LUXminer"},{"temp2_1":68}],"STATUS":[{"STATUS":"S"}],"id":1}],"id":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := cgminer.ParseReply(data)
		if err != nil {
			return
		}
		tm, err := Telemetry(r)
		if err != nil {
			return
		}
		for _, v := range []float64{tm.HashrateTHs, tm.PowerW, tm.PowerTargetW, tm.MaxTempC} {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < -40 {
				t.Fatalf("accepted an untrustworthy figure: %+v", tm)
			}
		}
		if tm.PowerW > 20_000 || tm.Mining && tm.Sleeping {
			t.Fatalf("implausible telemetry accepted: %+v", tm)
		}
	})
}
