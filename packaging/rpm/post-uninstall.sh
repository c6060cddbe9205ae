# oidc-bff: RPM has no purge; sessions in /var/lib/oidc-bff and the secret in /etc/oidc-bff are
# kept on erase (remove them by hand if wanted) and on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
