package broker

import (
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// A retained message published by one client reaches a later subscriber.
func TestBrokerRelaysRetained(t *testing.T) {
	b, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !strings.HasPrefix(b.URL(), "tcp://127.0.0.1:") || strings.HasSuffix(b.Addr(), ":0") {
		t.Fatalf("URL %q / Addr %q: want the bound port", b.URL(), b.Addr())
	}
	connect := func(id string) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		return c
	}
	pub := connect("pub")
	defer pub.Disconnect(0)
	if tok := pub.Publish("a/b", 1, true, "hello"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	sub := connect("sub")
	defer sub.Disconnect(0)
	got := make(chan string, 1)
	sub.Subscribe("a/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	select {
	case p := <-got:
		if p != "hello" {
			t.Fatalf("got %q, want hello", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("retained message never arrived")
	}
}

func TestStartRefusesBadAddress(t *testing.T) {
	if _, err := Start("127.0.0.1:notaport"); err == nil {
		t.Fatal("want an error for a bad address")
	}
}
