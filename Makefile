# siteagent: make build | test | demo | bench | install
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PREFIX  ?= /usr/local
DESTDIR ?=
BIN     := bin/siteagent

.PHONY: all build test test-race demo bench install uninstall fmt vet clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/siteagent

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# The tests speak real Modbus TCP, OPC UA and MQTT on loopback; the broker
# tests use Mosquitto (apt-get install mosquitto) and skip without it unless
# SITEAGENT_REQUIRE_MOSQUITTO=1 (as in CI).
test: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -count=1 -timeout 20m ./...

test-race:
	$(GO) test -race -count=1 -timeout 30m ./...

# Runs the real agent against the simulated site on loopback.
SCENARIO ?= underfrequency
demo: build
	$(BIN) demo --scenario $(SCENARIO)

# Benchmarks; the last lines are the figures, one per line: name value unit.
bench: build
	@scripts/bench.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/siteagent
	install -D -m 0644 systemd/siteagent.service $(DESTDIR)/etc/systemd/system/siteagent.service
	@if [ -e $(DESTDIR)/etc/siteagent/site.toml ]; then \
		echo "keeping existing $(DESTDIR)/etc/siteagent/site.toml"; \
	else \
		install -D -m 0640 configs/site.example.toml $(DESTDIR)/etc/siteagent/site.toml; \
	fi
	install -D -m 0644 README.md $(DESTDIR)/usr/share/doc/siteagent/README.md
	@if [ -z "$(DESTDIR)" ]; then \
		id siteagent >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/siteagent --shell /usr/sbin/nologin siteagent; \
		chgrp siteagent /etc/siteagent/site.toml; \
		if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "installed: edit /etc/siteagent/site.toml, run 'siteagent check-config /etc/siteagent/site.toml', then 'systemctl enable --now siteagent'"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/siteagent $(DESTDIR)/etc/systemd/system/siteagent.service
	@echo "left /etc/siteagent and the siteagent user in place"

clean:
	rm -rf bin
