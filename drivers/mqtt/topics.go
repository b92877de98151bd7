package mqtt

import (
	"errors"
	"strings"
)

// Topics names the topics of one site: <root>/<site>/<suffix>.
type Topics struct {
	Root string
	Site string
}

// Topic returns <root>/<site>/<suffix>, or <root>/<site> for "".
func (t Topics) Topic(suffix string) string {
	if suffix == "" {
		return t.Root + "/" + t.Site
	}
	return t.Root + "/" + t.Site + "/" + suffix
}

// Status carries the retained online/offline state (and the Last Will).
func (t Topics) Status() string { return t.Topic("status") }

// Points carries telemetry batches.
func (t Topics) Points() string { return t.Topic("points") }

// Plan carries the controller's plans.
func (t Topics) Plan() string { return t.Topic("plan") }

// Events carries event transitions.
func (t Topics) Events() string { return t.Topic("events") }

// checkSiteID refuses ids that would change the topic structure.
func checkSiteID(id string) error {
	switch {
	case id == "":
		return errors.New("site id is empty")
	case strings.ContainsAny(id, "/+#\x00"):
		return errors.New("site id " + id + " contains '/', '+', '#' or NUL, which cannot appear in one MQTT topic level")
	}
	return nil
}

// checkTopic refuses topics paho would send but a broker would refuse (and
// disconnect us for): empty, or containing wildcards.
func checkTopic(topic string) error {
	if topic == "" || strings.ContainsAny(topic, "+#\x00") {
		return errors.New("topic " + topic + " is empty or contains a wildcard or NUL")
	}
	return nil
}
