package opcua

import (
	"io"
	"log"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The library's server prints its start-up chatter with the standard
	// logger.
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}
