package opcua

import (
	"io"
	"log"
	"os"
	"strconv"
	"testing"
)

func TestMain(m *testing.M) {
	// The OPC UA library's server prints its start-up chatter with the
	// standard logger.
	log.SetOutput(io.Discard)
	if n, err := strconv.Atoi(os.Getenv(serveEnv)); err == nil {
		serveBench(n)
		return
	}
	os.Exit(m.Run())
}
