//! Integration tests: the real gateway over real TLS with a real redb file, against an
//! in-process fake OpenID provider, with time controlled by a shared manual clock.

mod admin; // oidc-bff sessions: over the admin socket, and on the file when stopped
mod backchannel; // back-channel logout by sid and sub, and every refused token
mod cli; // the binary's flags: bad values fail fast with exit 64 and the flag named
mod conformance; // the OpenID Foundation RP test plan cases that apply to a code-flow client
mod discovery; // provider down at start, issuer mismatch in discovery
mod hardening; // hostile clients: limits, smuggling, slowloris
mod layers; // the modules import each other without a cycle; config only from the top
mod lifecycle; // background refresh sweep: ahead of need, rotation, dead grants, outages
mod login; // the whole flow: isAuth, login, user, logout, cookies, no token leaks, restart
mod metrics; // --metrics-listen: Prometheus text that parses and counts what happened
mod policies; // who may call a route, which token its upstream gets, identity headers
mod proxy; // token relay: bearer, header hygiene, 401/403 first, 502/504, path tricks
mod refresh; // on-demand refresh: single flight, rotation, invalid_grant, outages
mod rejections; // callback attacks: state, flow cookie, nonce, code reuse, open redirects, iss
mod shared_store; // sessions in Redis shared by several gateways (a real redis-server)
mod signals; // SIGTERM: sd_notify READY/WATCHDOG/STOPPING, clean exit, sessions kept
mod spa; // the built SPA: files, client routes, caching, precompression, traversal
mod store_crash; // SIGKILL while writing sessions loses nothing acknowledged
mod support;
mod yarp; // --proxy-config: the seed's YARP section, transforms, anonymous routes, health
