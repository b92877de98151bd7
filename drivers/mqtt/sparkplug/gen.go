// Package sparkplug speaks Sparkplug B 3.0 over the agent's MQTT client:
// the payload schema (sparkplug_b.proto, generated into sparkplug_b.pb.go),
// an edge node (births, seq numbers, the NDEATH will with its bdSeq,
// aliases, rebirth, the primary host's STATE), and a host-side decoder
// that checks a node's stream the way a SCADA host would.
package sparkplug

//go:generate protoc --go_out=. --go_opt=paths=source_relative sparkplug_b.proto
