# oidc-bff: the service user, before the files that belong to it arrive.
getent group oidc-bff >/dev/null || groupadd --system oidc-bff
getent passwd oidc-bff >/dev/null || useradd --system --gid oidc-bff --home-dir /var/lib/oidc-bff \
    --no-create-home --shell /sbin/nologin --comment "oidc-bff gateway" oidc-bff
exit 0
