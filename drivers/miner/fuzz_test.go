package miner

import "testing"

// FuzzInventory: no inventory file, CSV or JSON, makes the reader or the
// range expansion panic. The corpus in testdata/fuzz holds real layouts.
func FuzzInventory(f *testing.F) {
	f.Add([]byte("host,family,rated_w,rack,efficiency_jth,port,count\n10.5.0.0/29,luxos,3250,A,21.5,,3\n10.5.1.7,braiins,3010,B,,50051,\n"), false)
	f.Add([]byte(`{"miners":[{"cidr":"10.6.0.0/30","family":"luxos","rated_w":3250},{"host":"10.6.1.1","family":"vnish","rated_w":3400}]}`), true)
	f.Fuzz(func(t *testing.T, data []byte, isJSON bool) {
		var entries []FileEntry
		if isJSON {
			entries, _ = parseJSON("f.json", data)
		} else {
			entries, _ = parseCSV("f.csv", data)
		}
		total := 0
		for _, e := range entries {
			ms, err := e.HostEntry.expand("g", MaxMiners-total)
			if err == nil {
				total += len(ms)
			}
			if total > MaxMiners {
				t.Fatalf("expanded past the limit: %d", total)
			}
		}
	})
}
