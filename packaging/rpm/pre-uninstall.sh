# oidc-bff: on erase ($1 = 0, not on upgrade) stop and disable the service.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now oidc-bff.service >/dev/null 2>&1 || :
fi
exit 0
