# flocon - build, test, install.
#
#   make                 release build (target/release/flocon)
#   make test            the test suite: unit, integration and end-to-end tests (real pacman on
#                        a namespace LAN), all inside private network namespaces
#   make demo            a small namespace LAN showing discovery and a verified transfer
#   sudo make install    binary, systemd unit, /etc/flocon.conf, /etc/pacman.d/flocon,
#                        flocon(8), flocon.conf(5), the licence and the docs
#   sudo make uninstall  the same, except configuration that was changed or is still in use
#   make static          static x86_64 binary (musl)
#   make aarch64 armv7   static ARM binaries (musl) for Raspberry Pi hosts
#   make lint            cargo fmt --check + clippy -D warnings
#   make verify-unit     systemd-analyze verify flocon.service
#   make bench           bench/bench.sh (peer server vs nginx, RSS, binary size),
#                        bench/lookup.sh (lookup latency), bench/front.sh (front vs direct),
#                        bench/io.sh (RSS with 256 slow clients, CPU per GiB of a relayed hit),
#                        bench/lanjoin.sh (4 hosts installing at once: mirror bytes, wall),
#                        bench/index.sh (sync-db index memory vs pacman -Sl, the three
#                        static binaries' sizes)
#
# PREFIX defaults to /usr/local, the place for software a user installs by hand (the unit
# goes to /usr/local/lib/systemd/system, which systemd searches). An Arch package builds with
#   make install PREFIX=/usr DESTDIR="$pkgdir"
# SYSCONFDIR (default /etc) holds flocon.conf and pacman.d/flocon; existing copies there are
# never overwritten. MANDIR, DOCDIR and LICENSEDIR follow PREFIX (share/man, share/doc/flocon,
# share/licenses/flocon). The PKGBUILD does exactly this.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/flocon
LICENSEDIR ?= $(PREFIX)/share/licenses/flocon
# pacman's configuration, checked by uninstall (under DESTDIR)
PACMAN_CONF ?= $(SYSCONFDIR)/pacman.conf
CARGO ?= cargo
# extra arguments for the test binaries, e.g. CARGO_TEST_ARGS=--test-threads=1
CARGO_TEST_ARGS ?=

# the binary install copies; BIN=... installs a cross-built one
BIN ?= target/release/flocon
# etc/ source:installed name under SYSCONFDIR
CONF_FILES := flocon.conf:flocon.conf pacman.d-flocon:pacman.d/flocon
MUSL_X86_64 := x86_64-unknown-linux-musl
MUSL_AARCH64 := aarch64-unknown-linux-musl
MUSL_ARMV7 := armv7-unknown-linux-musleabihf
# Rust 1.94 and 1.95 ship no standard library for armv7-unknown-linux-musleabihf (the
# channel manifests mark it unavailable); 1.93.0 is the newest release that has it. Used only
# when the default toolchain lacks the target.
ARMV7_TOOLCHAIN ?= 1.93.0

.PHONY: all build test demo install uninstall static aarch64 armv7 cross lint verify-unit \
	bench clean

all: build

build:
	$(CARGO) build --release

# The crates are fetched first, outside: the namespace has no network at all. So is the
# Debian trixie tree holding pacman 7 (tests/trixie.sh: root, ~2 minutes the first time);
# FLOCON_NO_PACMAN7=1 skips it and the pacman 7 tests, saying so.
test:
	$(CARGO) fetch --locked
	@# the pacman 7 tree of the CacheServer run (debootstrap, once; then "up to date")
	@if [ "$${FLOCON_NO_PACMAN7:-0}" != 1 ]; then tests/trixie.sh target/trixie; fi
	tests/netns.sh sh -c '$(CARGO) build --release --offline && $(CARGO) test --release --offline -- $(CARGO_TEST_ARGS)'
# (the end-to-end suite, tests/e2e.sh, runs inside `cargo test` through tests/lan.rs)

demo:
	@if [ -x tests/demo.sh ]; then \
		$(CARGO) build --release && FLOCON_BIN="$(CURDIR)/$(BIN)" tests/demo.sh; \
	else echo "make demo: not yet (lands with the end-to-end issue)"; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# systemd-analyze verify insists that ExecStart exists: check a copy pointing at our build.
# It also opens each Documentation= page with man(1): ours are found through MANPATH.
verify-unit: build
	@command -v systemd-analyze >/dev/null || { echo "verify-unit: systemd-analyze not found (apt-get install systemd)"; exit 1; }
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	sed 's|^ExecStart=[^ ]*|ExecStart=$(CURDIR)/$(BIN)|' flocon.service > "$$d/flocon.service" && \
	mkdir -p "$$d/man/man5" "$$d/man/man8" && cp man/flocon.8 "$$d/man/man8/" && \
	cp man/flocon.conf.5 "$$d/man/man5/" && \
	if command -v man >/dev/null; then manopt=--man=yes; else \
		echo "verify-unit: man(1) not installed, Documentation= not checked"; manopt=--man=no; fi && \
	MANPATH="$$d/man" systemd-analyze verify $$manopt "$$d/flocon.service" && \
	echo "verify-unit: flocon.service is clean"
	@# the sandbox must stay at least this tight: exposure <= 1.5 (the threshold is x10)
	@out=$$(systemd-analyze security --offline=yes --threshold=15 flocon.service 2>&1); rc=$$?; \
	echo "verify-unit: $$(echo "$$out" | tail -1)"; exit $$rc

# Not built here: `make && sudo make install` keeps root out of target/. BIN=path installs
# another binary (a cross-built one: make install BIN=target/aarch64-unknown-linux-musl/static/flocon).
install:
	@test -x $(BIN) || { echo "install: $(BIN) is missing; run 'make' first"; exit 1; }
	install -Dm755 $(BIN) "$(DESTDIR)$(BINDIR)/flocon"
	install -d "$(DESTDIR)$(UNITDIR)"
	sed 's|^ExecStart=[^ ]*|ExecStart=$(BINDIR)/flocon|' flocon.service > "$(DESTDIR)$(UNITDIR)/flocon.service"
	chmod 644 "$(DESTDIR)$(UNITDIR)/flocon.service"
	install -Dm644 man/flocon.8 "$(DESTDIR)$(MANDIR)/man8/flocon.8"
	install -Dm644 man/flocon.conf.5 "$(DESTDIR)$(MANDIR)/man5/flocon.conf.5"
	install -Dm644 LICENSE "$(DESTDIR)$(LICENSEDIR)/LICENSE"
	install -Dm644 -t "$(DESTDIR)$(DOCDIR)" README.md docs/DESIGN.md docs/PROTOCOL.md
	@for f in $(CONF_FILES); do \
		src=etc/$${f%%:*}; dst="$(DESTDIR)$(SYSCONFDIR)/$${f#*:}"; \
		if [ -e "$$dst" ]; then echo "install: keeping existing $$dst"; \
		else echo "install -Dm644 $$src $$dst"; install -Dm644 "$$src" "$$dst"; fi; \
	done
	@echo "Next: add 'Include = $(SYSCONFDIR)/pacman.d/flocon' to each repo section of pacman.conf"
	@echo "      (see that file), then: systemctl daemon-reload && systemctl enable --now flocon"

# Configuration is removed only when it is still exactly what install put there, and
# pacman.d/flocon never while pacman's configuration still includes it: pacman refuses to
# run with an Include of a missing file. The lines to remove are printed instead.
uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/flocon" "$(DESTDIR)$(UNITDIR)/flocon.service" \
		"$(DESTDIR)$(MANDIR)/man8/flocon.8" "$(DESTDIR)$(MANDIR)/man5/flocon.conf.5" \
		"$(DESTDIR)$(LICENSEDIR)/LICENSE" "$(DESTDIR)$(DOCDIR)/README.md" \
		"$(DESTDIR)$(DOCDIR)/DESIGN.md" "$(DESTDIR)$(DOCDIR)/PROTOCOL.md"
	@rmdir "$(DESTDIR)$(LICENSEDIR)" "$(DESTDIR)$(DOCDIR)" 2>/dev/null || true
	@inc="$(SYSCONFDIR)/pacman.d/flocon"; re=$$(printf '%s' "$$inc" | sed 's/[].[*^$$\\]/\\&/g'); \
	refs=$$(grep -HnE "^[[:space:]]*Include[[:space:]]*=[[:space:]]*$$re[[:space:]]*$$" \
		"$(DESTDIR)$(PACMAN_CONF)" $$(find "$(DESTDIR)$(SYSCONFDIR)/pacman.d" -maxdepth 1 -type f \
		! -name flocon 2>/dev/null) 2>/dev/null); \
	old=$$(grep -HnE '^[[:space:]]*Server[[:space:]]*=[[:space:]]*http://(localhost|127\.0\.0\.1|\[::1\]):19433/' \
		"$(DESTDIR)$(PACMAN_CONF)" $$(find "$(DESTDIR)$(SYSCONFDIR)/pacman.d" -maxdepth 1 -type f \
		! -name flocon 2>/dev/null) 2>/dev/null); \
	for f in $(CONF_FILES); do \
		src=etc/$${f%%:*}; dst="$(DESTDIR)$(SYSCONFDIR)/$${f#*:}"; \
		if [ ! -e "$$dst" ]; then :; \
		elif [ "$$dst" = "$(DESTDIR)$$inc" ] && [ -n "$$refs" ]; then \
			echo "uninstall: keeping $$dst: pacman's configuration still includes it."; \
			echo "  Remove these lines, then delete $$dst (or run 'make uninstall' again):"; \
			echo "$$refs" | sed 's/^/    /'; \
		elif cmp -s "$$src" "$$dst"; then echo "rm -f $$dst"; rm -f "$$dst"; \
		else echo "uninstall: keeping modified $$dst"; fi; \
	done; \
	if [ -n "$$old" ]; then \
		echo "uninstall: pacman still lists flocon as a Server (it will skip it, after an error each time):"; \
		echo "$$old" | sed 's/^/    /'; \
	fi

# ---------------------------------------------------------------------------- static builds
# $(call have-target,TRIPLE[,+TOOLCHAIN]): the toolchain has the target's standard library
have-target = [ -d "$$(rustc $(2) --print sysroot)/lib/rustlib/$(1)/lib" ]
# $(call show,TRIPLE,QEMU): size of the (already stripped, see Cargo.toml) binary, and a
# smoke run (--version) under qemu-user when it is installed, in a private network namespace
# like every run of flocon
# The static builds use profile "static" (opt-level z, LTO, panic = "abort"); src/sys.rs
# stands in for the unwinder they never use, which drops std's backtrace symboliser:
# ~873 KB -> ~620 KB on x86_64, with the prebuilt std of a stable toolchain (docs/DESIGN.md,
# "Binary size"). SMALL_STD=1 (needs the rust-src component) also rebuilds std for size
# (-Zbuild-std, enabled on the stable toolchain with RUSTC_BOOTSTRAP=1) and links without
# relocations; not the default, so that every machine builds the same binary.
SMALL_STD ?= 0
ifeq ($(SMALL_STD),1)
STATIC_ENV = RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C relocation-model=static"
STATIC_ARGS = --profile static -Zbuild-std=std,panic_abort
else
STATIC_ENV =
STATIC_ARGS = --profile static
endif

# The same builds link without unwind tables (src/no_unwind_tables.ld): with the unwinder
# stood in for, nothing reads them (~95 KB on x86_64). x86_64 links through cc, the cross
# builds straight with rust-lld. 32-bit ARM unwinds through .ARM.exidx, which stays.
NO_UNWIND_CC = -C link-arg=-Wl,--no-eh-frame-hdr -C link-arg=-Wl,-T,$(CURDIR)/src/no_unwind_tables.ld
NO_UNWIND_LLD = -C link-arg=--no-eh-frame-hdr -C link-arg=-T -C link-arg=$(CURDIR)/src/no_unwind_tables.ld

define show
	@f=target/$(1)/static/flocon; \
	echo "$$f: $$(stat -c %s $$f) bytes"; \
	if command -v file >/dev/null; then file -b $$f; fi; \
	if [ -n "$(2)" ] && command -v $(2) >/dev/null; then echo "$(2): $$(tests/netns.sh $(2) $$f --version)"; fi
endef

# x86_64 musl links with the host's cc and the self-contained musl objects Rust ships.
static:
	@$(call have-target,$(MUSL_X86_64)) || rustup target add $(MUSL_X86_64)
	$(STATIC_ENV) $(CARGO) rustc $(STATIC_ARGS) --target $(MUSL_X86_64) --bin flocon -- $(NO_UNWIND_CC)
	$(call show,$(MUSL_X86_64))

# Cross builds link with rust-lld, shipped with every rustup toolchain: no cross gcc needed.
aarch64:
	@$(call have-target,$(MUSL_AARCH64)) || rustup target add $(MUSL_AARCH64)
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld $(STATIC_ENV) \
		$(CARGO) rustc $(STATIC_ARGS) --target $(MUSL_AARCH64) --bin flocon -- $(NO_UNWIND_LLD)
	$(call show,$(MUSL_AARCH64),qemu-aarch64)

armv7:
	@if $(call have-target,$(MUSL_ARMV7)) || rustup target add $(MUSL_ARMV7) 2>/dev/null; then tc=; \
	else \
		echo "armv7: the default toolchain has no $(MUSL_ARMV7); using Rust $(ARMV7_TOOLCHAIN)"; \
		tc=+$(ARMV7_TOOLCHAIN); \
		$(call have-target,$(MUSL_ARMV7),$$tc) 2>/dev/null || \
			rustup toolchain install $(ARMV7_TOOLCHAIN) --profile minimal --target $(MUSL_ARMV7) || exit 1; \
	fi; \
	echo "$(CARGO) $$tc build --profile static --target $(MUSL_ARMV7)"; \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=rust-lld \
		$(CARGO) $$tc build --profile static --target $(MUSL_ARMV7)
	$(call show,$(MUSL_ARMV7),qemu-arm)

cross: static aarch64 armv7

bench:
	bench/bench.sh
	FLOCON_BIN_PREBUILT=1 bench/lookup.sh
	FLOCON_BIN_PREBUILT=1 bench/front.sh
	FLOCON_BIN_PREBUILT=1 bench/io.sh
	bench/index.sh
	FLOCON_BIN_PREBUILT=1 bench/lanjoin.sh

clean:
	$(CARGO) clean
