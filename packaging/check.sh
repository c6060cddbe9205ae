#!/usr/bin/env bash
# Checks the packages that packaging/build.sh made, the way an operator meets them. Run as root on
# a Debian machine without the package installed (CI does): it installs, upgrades, removes and
# purges the .deb for real, and inspects the .rpm with Debian's rpm tool.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(ls target/debian/oidc-bff_*.deb)
rpm=$(ls target/generate-rpm/oidc-bff-*.rpm)
fail() { echo "check.sh: FAILED: $*" >&2; exit 1; }
has() { grep -qF -- "$1" <<<"$2" || fail "$3"; }

if dpkg -s oidc-bff >/dev/null 2>&1; then
  fail "oidc-bff is already installed here; this check installs and purges it"
fi

echo "== .deb: contents and metadata"
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/oidc-bff ./lib/systemd/system/oidc-bff.service ./etc/default/oidc-bff \
  ./usr/share/man/man1/oidc-bff.1.gz ./usr/share/man/man1/oidc-bff-serve.1.gz \
  ./usr/share/bash-completion/completions/oidc-bff \
  ./usr/share/zsh/vendor-completions/_oidc-bff ./usr/share/fish/vendor_completions.d/oidc-bff.fish \
  ./usr/share/doc/oidc-bff/README.md ./usr/share/doc/oidc-bff/copyright; do
  has " $path" "$contents" "$path is not in the .deb"
done
has "/etc/default/oidc-bff" "$(dpkg-deb -I "$deb" conffiles)" \
  "/etc/default/oidc-bff is not a conffile"

echo "== .deb: install"
dpkg -i "$deb"
[ "$(command -v oidc-bff)" = /usr/bin/oidc-bff ] || fail "oidc-bff is not /usr/bin/oidc-bff"
oidc-bff --version
version=$(oidc-bff --version)
has "oidc-bff" "$version" "--version printed: $version"
man -w oidc-bff
[ "$(man -w oidc-bff)" = /usr/share/man/man1/oidc-bff.1.gz ] || fail "man -w oidc-bff"
for page in oidc-bff-serve oidc-bff-sessions oidc-bff-check-config; do
  [ "$(man -w "$page")" = "/usr/share/man/man1/$page.1.gz" ] || fail "man -w $page"
done
getent passwd oidc-bff >/dev/null || fail "no oidc-bff system user"
[ "$(getent passwd oidc-bff | cut -d: -f7)" = /usr/sbin/nologin ] || fail "the oidc-bff user has a login shell"
[ "$(stat -c %a:%U:%G /etc/oidc-bff)" = 750:root:oidc-bff ] || fail "/etc/oidc-bff is $(stat -c %a:%U:%G /etc/oidc-bff), not 750:root:oidc-bff"
[ "$(stat -c %a:%U:%G /etc/default/oidc-bff)" = 640:root:oidc-bff ] || fail "/etc/default/oidc-bff is $(stat -c %a:%U:%G /etc/default/oidc-bff), not 640:root:oidc-bff"
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID' /lib/systemd/system/oidc-bff.service || fail "the unit has no ExecReload"
systemd-analyze verify /lib/systemd/system/oidc-bff.service
systemd-analyze security --offline=true --threshold=20 /lib/systemd/system/oidc-bff.service | tail -1
if [ -d /run/systemd/system ]; then
  ! systemctl is-enabled oidc-bff.service >/dev/null 2>&1 || fail "the service was enabled before being configured"
  ! systemctl is-active oidc-bff.service >/dev/null 2>&1 || fail "the service was started before being configured"
fi

echo "== .deb: upgrade keeps the configuration and the data"
echo 'OIDC_BFF_CLIENT_ID=kept-by-upgrade' >> /etc/default/oidc-bff
install -d -o oidc-bff -g oidc-bff -m 0700 /var/lib/oidc-bff
echo marker > /var/lib/oidc-bff/marker
# The operator's own permissions on /etc/oidc-bff (as for a TLS key kept there) must survive.
chmod 0710 /etc/oidc-bff
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb"
[ "$(stat -c %a:%G /etc/oidc-bff)" = 710:oidc-bff ] || fail "the upgrade reset /etc/oidc-bff to $(stat -c %a:%G /etc/oidc-bff)"
grep -q kept-by-upgrade /etc/default/oidc-bff || fail "the upgrade replaced /etc/default/oidc-bff"
[ -f /var/lib/oidc-bff/marker ] || fail "the upgrade lost /var/lib/oidc-bff"

echo "== .deb: remove keeps configuration and data; purge removes them"
dpkg -r oidc-bff
[ ! -e /usr/bin/oidc-bff ] || fail "remove left /usr/bin/oidc-bff"
[ -f /etc/default/oidc-bff ] || fail "remove deleted the configuration"
[ -f /var/lib/oidc-bff/marker ] || fail "remove deleted the data dir"
dpkg -P oidc-bff
[ ! -e /etc/default/oidc-bff ] || fail "purge left /etc/default/oidc-bff"
[ ! -e /var/lib/oidc-bff ] || fail "purge left /var/lib/oidc-bff"
[ ! -e /etc/oidc-bff ] || fail "purge left /etc/oidc-bff"

echo "== .rpm: files, config files and scripts"
rpm_files=$(rpm -qlp "$rpm" 2>/dev/null)
echo "$rpm_files"
for path in /usr/bin/oidc-bff /usr/lib/systemd/system/oidc-bff.service /etc/sysconfig/oidc-bff \
  /usr/share/man/man1/oidc-bff.1.gz /usr/share/man/man1/oidc-bff-serve.1.gz \
  /usr/share/bash-completion/completions/oidc-bff \
  /usr/share/zsh/site-functions/_oidc-bff /usr/share/fish/vendor_completions.d/oidc-bff.fish \
  /usr/share/licenses/oidc-bff/LICENSE; do
  has "$path" "$rpm_files" "$path is not in the .rpm"
done
has /etc/sysconfig/oidc-bff "$(rpm -qp --configfiles "$rpm" 2>/dev/null)" "/etc/sysconfig/oidc-bff is not a config file"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
echo "$scripts"
has "useradd --system" "$scripts" "the .rpm does not create the system user"
has "systemctl daemon-reload" "$scripts" "the .rpm does not reload systemd"
if grep -Eq "systemctl (enable|start)|enable --now" <<<"$(rpm -qp --scripts "$rpm" 2>/dev/null | sed -n '/postinstall/,/preuninstall/p' | grep -v echo)"; then
  fail "the .rpm starts or enables the service on install"
fi

echo "packages: all checks passed"
