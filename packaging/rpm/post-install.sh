# oidc-bff: tell systemd about the unit; never enable or start it here (it needs configuring in
# /etc/sysconfig/oidc-bff first). On upgrade ($1 > 1) restart it only if it was running.
install -d -m 0700 -o root -g root /etc/oidc-bff
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -gt 1 ]; then
        systemctl try-restart oidc-bff.service >/dev/null 2>&1 || :
    fi
fi
if [ "$1" -eq 1 ]; then
    echo "oidc-bff: configure /etc/sysconfig/oidc-bff, then: systemctl enable --now oidc-bff"
fi
exit 0
