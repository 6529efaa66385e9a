// Package session is kubegate's browser session: a sealed cookie (access.md §2.3)
// that the gateway's own origin issues at login and that the Dashboard presents,
// with its CSRF token and agent id, on every Kubernetes request.
//
// Why each choice:
//
//   - The session is sealed into the cookie, not kept on the server: replicas of
//     `kubegate authz` share no memory, and a cookie every replica can open needs
//     nothing else to be shared except the keys (a file, like the other secrets).
//   - Sealing is AES-256-GCM from the standard library with a random 96-bit nonce
//     (crypto/cipher's NewGCM; 2^32 seals per key keep the nonce-collision
//     probability below 2^-32, NIST SP 800-38D §8.3 — rotate the key long before).
//     The value is `v1.<key id>.<base64url(nonce|ciphertext)>`. The additional data
//     binds the version, the key id and a purpose ("session" for the session cookie,
//     the caller's for SealValue), so a value sealed for one purpose (the OIDC login
//     state) never opens as another, nor as a session. A value longer than
//     MaxSealedLen is refused before anything is decoded.
//   - Keys come from a file: one per line, base64 (standard or URL alphabet) of
//     exactly 32 random bytes (`head -c 32 /dev/urandom | base64`); blank lines and
//     '#' comments are ignored. The first key seals; the others only open, so a key
//     is rotated by putting a new one first and removing the old one after the
//     longest session (MaxAge) has passed. The key id in the cookie (the first 8
//     bytes of the key's SHA-256, base64url) picks the key without trying each.
//     Run watches the file (internal/filewatch: Kubernetes Secret symlink swaps
//     included) and swaps the keys atomically; a bad new file keeps the old keys
//     and logs why.
//   - Expiry is idle (RefreshedAt + IdleTimeout; Refresh moves RefreshedAt) and
//     absolute (ExpiresAt = IssuedAt + MaxAge); a refresh never extends past
//     ExpiresAt.
//   - The CSRF token is random, sealed inside the cookie and so bound to the one
//     session: a token of another session, or none, is a 401. The comparison is
//     constant-time (crypto/subtle).
//   - Logout must end the session even though the cookie still opens: a sealed
//     cookie is all an attacker who copied it needs, so only state the gateway keeps
//     can refuse it. That state is a Revocations store holding the session id until
//     the session's absolute expiry (after which the cookie is refused anyway).
//     Memory is that store for ONE replica: it forgets logouts when the process
//     restarts, so it refuses every session issued before it was created — a
//     restart logs everyone out rather than reopening a logged-out session. Several
//     replicas need a store they share (Etcd), or a logout on one replica would not
//     be seen by the others.
//   - The session Authenticator is never put behind the identity cache: a cached
//     success would keep a logged-out session working for the cache's TTL. It checks
//     the user still exists and is active on every request.
//   - Nothing secret is logged: Session's String and LogValue leave out the CSRF
//     token and show at most an 8-character prefix of the session id; the cookie and
//     the keys are never logged.
package session
