# siteagent: make build | test | demo | bench | install
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PREFIX  ?= /usr/local
DESTDIR ?=
BIN     := bin/siteagent

.PHONY: all build build-static check-linkage test test-race demo demo-miners bench install uninstall fmt vet clean

all: build

# The NVML driver needs cgo: this binary links glibc dynamically (fully
# static cgo builds crash in nvmlInit) and everything else statically.
build:
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/siteagent

# Fully static, no cgo: runs anywhere, but GPU control is not built in (the
# NVML driver is a stub that says so). Fine for the site role.
build-static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)-static ./cmd/siteagent

# The cgo binary may need only glibc; the static one nothing at all.
check-linkage: build build-static
	@libs=$$(readelf -d $(BIN) | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' '); \
	for l in $$libs; do case $$l in libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*|ld-linux*) ;; \
		*) echo "$(BIN) needs $$l: only glibc is allowed"; exit 1;; esac; done; \
	echo "$(BIN): dynamic dependencies: $$libs"
	@if readelf -d $(BIN)-static 2>/dev/null | grep -q NEEDED || readelf -l $(BIN)-static | grep -q INTERP; then \
		echo "$(BIN)-static is not fully static"; exit 1; fi; echo "$(BIN)-static: fully static"
	@$(BIN) version | grep -q "GPU control: built in" || { echo "$(BIN) lacks GPU control"; exit 1; }
	@$(BIN)-static version | grep -q "not built in" || { echo "$(BIN)-static claims GPU control"; exit 1; }

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

# The same site with 2,000 simulated LuxOS miners shed over their API.
demo-miners: build
	$(BIN) demo-miners --scenario $(SCENARIO)

# Benchmarks; the last lines are the figures, one per line: name value unit.
bench: build
	@scripts/bench.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/siteagent
	install -D -m 0644 systemd/siteagent.service $(DESTDIR)/etc/systemd/system/siteagent.service
	install -D -m 0644 systemd/siteagent-node.service $(DESTDIR)/etc/systemd/system/siteagent-node.service
	@if [ ! -e $(DESTDIR)/etc/siteagent/node.toml ]; then install -D -m 0640 configs/node.example.toml $(DESTDIR)/etc/siteagent/node.toml.example; fi
	@if [ -e $(DESTDIR)/etc/siteagent/site.toml ]; then \
		echo "keeping existing $(DESTDIR)/etc/siteagent/site.toml"; \
	else \
		install -D -m 0640 configs/site.example.toml $(DESTDIR)/etc/siteagent/site.toml; \
	fi
	install -D -m 0644 README.md $(DESTDIR)/usr/share/doc/siteagent/README.md
	install -D -m 0644 docs/gpu.md $(DESTDIR)/usr/share/doc/siteagent/gpu.md
	@if [ -z "$(DESTDIR)" ]; then \
		id siteagent >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/siteagent --shell /usr/sbin/nologin siteagent; \
		chgrp siteagent /etc/siteagent/site.toml; \
		if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "installed: edit /etc/siteagent/site.toml, run 'siteagent check-config /etc/siteagent/site.toml', then 'systemctl enable --now siteagent'"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/siteagent $(DESTDIR)/etc/systemd/system/siteagent.service $(DESTDIR)/etc/systemd/system/siteagent-node.service
	@echo "left /etc/siteagent and the siteagent user in place"

clean:
	rm -rf bin
