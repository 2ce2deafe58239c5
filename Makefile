# swift-vtpm — build, test, demo, bench. `make test` and `make demo` set up a fresh Debian 12 machine.
SWIFT ?= swift
GUEST_DIR := qemu/out

.PHONY: all deps build release guest test unit-test demo bench swtpm-compat fuzz lint clean install deb \
	kernel-guest kernel-test swtpm-cuse-compat

all: build

deps:
	./scripts/install-deps.sh

build: deps
	$(SWIFT) build

# Static Swift runtime, lld, no PIE, no exported symbols, unused sections dropped: at startup the
# process touches far fewer pages (RSS 19.5 -> 15.2 MB, spawn 8.4 -> 5.3 ms; see bench/README.md).
RELEASE_FLAGS := -c release --static-swift-stdlib -Xswiftc -use-ld=lld -Xlinker --gc-sections \
	-Xswiftc -Xclang-linker -Xswiftc -no-pie -Xlinker --no-export-dynamic

release: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product vtpmd
	$(SWIFT) build $(RELEASE_FLAGS) --product vtpm-state
	$(SWIFT) build $(RELEASE_FLAGS) --product vtpmctl

# Installation. `make install` puts vtpmd, vtpmctl and vtpm-state in $(PREFIX)/bin, swtpm's names for
# them (swtpm = vtpmd, swtpm_setup = vtpm-state) in $(PREFIX)/libexec/swift-vtpm/swtpm-names (put that
# directory first in PATH, or install with SWTPM_NAMES=1 to have them in $(PREFIX)/bin), and the host
# configuration in $(SYSCONFDIR)/vtpm/vtpmd.conf unless one exists. `make deb` builds the Debian package,
# which takes /usr/bin/swtpm and /usr/bin/swtpm_setup over with dpkg-divert (packaging/debian/).
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
SYSTEMDDIR ?= /lib/systemd/system
DESTDIR ?=
SWTPM_NAMES ?= 0
VERSION ?= $(shell sed -n 's/.*static let version = "\(.*\)".*/\1/p' Sources/VTPMServer/Capabilities.swift)
NAMES_DIR = $(if $(filter 1,$(SWTPM_NAMES)),$(DESTDIR)$(PREFIX)/bin,$(DESTDIR)$(PREFIX)/libexec/swift-vtpm/swtpm-names)

install: release
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin $(NAMES_DIR) $(DESTDIR)$(SYSCONFDIR)/vtpm \
		$(DESTDIR)$(SYSCONFDIR)/apparmor.d/abstractions $(DESTDIR)$(PREFIX)/share/doc/swift-vtpm
	bin=$$($(SWIFT) build $(RELEASE_FLAGS) --show-bin-path) && \
		install -m 0755 -s $$bin/vtpmd $$bin/vtpmctl $$bin/vtpm-state $(DESTDIR)$(PREFIX)/bin/
	ln -f $(DESTDIR)$(PREFIX)/bin/vtpmd $(NAMES_DIR)/swtpm
	ln -f $(DESTDIR)$(PREFIX)/bin/vtpm-state $(NAMES_DIR)/swtpm_setup
	[ -e $(DESTDIR)$(SYSCONFDIR)/vtpm/vtpmd.conf ] || install -m 0644 packaging/vtpmd.conf $(DESTDIR)$(SYSCONFDIR)/vtpm/vtpmd.conf
	install -m 0644 packaging/apparmor/swift-vtpm $(DESTDIR)$(SYSCONFDIR)/apparmor.d/abstractions/swift-vtpm
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/swift-vtpm/README.md
	install -d -m 0755 $(DESTDIR)$(SYSTEMDDIR)
	install -m 0644 packaging/systemd/vtpm-ca-signer.service $(DESTDIR)$(SYSTEMDDIR)/vtpm-ca-signer.service

DEB_ROOT := .build/deb/root
DEB_FILE := .build/deb/swift-vtpm_$(VERSION)_amd64.deb

deb: release
	rm -rf .build/deb && install -d -m 0755 $(DEB_ROOT)/DEBIAN
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(DEB_ROOT) PREFIX=/usr SWTPM_NAMES=1
	sed 's/@VERSION@/$(VERSION)/' packaging/debian/control.in >$(DEB_ROOT)/DEBIAN/control
	echo "Installed-Size: $$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)" >>$(DEB_ROOT)/DEBIAN/control
	install -m 0755 packaging/debian/preinst packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm $(DEB_ROOT)/DEBIAN/
	install -m 0644 packaging/debian/conffiles $(DEB_ROOT)/DEBIAN/
	dpkg-deb --root-owner-group --build $(DEB_ROOT) $(DEB_FILE)
	@echo "built $(DEB_FILE)"

guest: deps
	./qemu/build-guest.sh $(GUEST_DIR)

# Everything: unit tests, real-binary integration tests, QEMU guest tests.
test: deps guest deb
	$(SWIFT) build --build-tests
	$(SWIFT) test --no-parallel

# vtpmd inside a guest kernel (KernelGuestTests, about 6 minutes): `vtpmd cuse` and `vtpmd chardev --vtpm-proxy`
# under swtpm_ioctl and tpm2-tools, and the power-loss test. The guest runs the release vtpmd; its image is
# qemu/out-kernel (qemu/build-kernel-guest.sh). CI runs this after `make test`.
KERNEL_GUEST_DIR := qemu/out-kernel

kernel-guest: release
	./qemu/build-kernel-guest.sh $(KERNEL_GUEST_DIR) $(CURDIR)/.build/release

kernel-test: deps kernel-guest
	$(SWIFT) build --build-tests
	VTPM_KERNEL_GUEST_DIR=$(CURDIR)/$(KERNEL_GUEST_DIR) $(SWIFT) test --no-parallel --filter KernelGuestTests

# swtpm 0.7.1's own test scripts against `vtpmd cuse`, in the kernel guest: SWTPM_SRC=/tmp/swtpm-0.7.1 (see
# scripts/swtpm-compat.sh for how to extract it).
swtpm-cuse-compat: deps release
	./scripts/swtpm-cuse-compat.sh

unit-test: deps
	$(SWIFT) test --no-parallel --skip IntegrationTests

demo: deps guest build
	$(SWIFT) run vtpm-demo

bench: deps release
	VTPMD=$(CURDIR)/.build/release/vtpmd VTPM_STATE=$(CURDIR)/.build/release/vtpm-state ./bench/run.sh

# swtpm 0.7.1's own test scripts against vtpmd (needs a local copy of swtpm's tests/, see README).
swtpm-compat: build
	./scripts/swtpm-compat.sh

# Every parser that takes outside bytes under libFuzzer, FUZZ_SECONDS each (Fuzz/README.md).
fuzz: deps
	./scripts/fuzz.sh

lint:
	git ls-files -z '*.swift' | xargs -0 $(SWIFT) format lint --strict --parallel

clean:
	rm -rf .build $(GUEST_DIR) $(KERNEL_GUEST_DIR) bench/out
