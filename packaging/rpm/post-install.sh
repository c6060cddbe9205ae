# oidc-bff: tell systemd about the unit; never enable or start it here (it needs configuring in
# /etc/sysconfig/oidc-bff first). On upgrade ($1 > 1) restart it only if it was running.
# Created when missing, never reset: an operator's own mode or group on /etc/oidc-bff survives
# every upgrade. The sysconfig file may hold the client secret: root and the service's group.
if [ ! -d /etc/oidc-bff ]; then
    install -d -m 0750 -o root -g oidc-bff /etc/oidc-bff
fi
if [ "$1" -eq 1 ] && [ -f /etc/sysconfig/oidc-bff ]; then
    chgrp oidc-bff /etc/sysconfig/oidc-bff
    chmod 0640 /etc/sysconfig/oidc-bff
fi
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
