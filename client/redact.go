package client

import (
	"net/url"
	"sort"
	"strings"
)

// redacted replaces a credential wherever the client prints its URL.
const redacted = "REDACTED"

// credentialParams are the query parameter name fragments treated as
// credentials (case-insensitive substrings): access_token, token, api_key,
// key, password, passwd, secret, auth, authorization, credential, signature
// (X-Amz-Signature, sig), session, jwt.
var credentialParams = []string{"token", "key", "pass", "pwd", "secret", "auth", "credential", "sig", "session", "jwt"}

func isCredentialParam(name string) bool {
	name = strings.ToLower(name)
	for _, f := range credentialParams {
		if strings.Contains(name, f) {
			return true
		}
	}
	return false
}

// redactURL returns u as the client prints it, in errors, logs and spans:
// userinfo and the values of credential-like query parameters replaced by
// REDACTED, and the secrets it replaced, longest first, for scrubbing texts
// that came from elsewhere (the dialer's errors, a refusal's body).
func redactURL(u *url.URL) (string, []string) {
	r := *u
	var secrets []string
	if u.User != nil {
		secrets = append(secrets, u.User.Username())
		if p, ok := u.User.Password(); ok {
			secrets = append(secrets, p)
			r.User = url.UserPassword(redacted, redacted)
		} else {
			r.User = url.User(redacted)
		}
	}
	if u.RawQuery != "" {
		parts := strings.Split(u.RawQuery, "&")
		for i, p := range parts {
			name, value, _ := strings.Cut(p, "=")
			n, err := url.QueryUnescape(name)
			if err != nil {
				n = name
			}
			if !isCredentialParam(n) || value == "" {
				continue
			}
			secrets = append(secrets, value)
			if v, err := url.QueryUnescape(value); err == nil && v != value {
				secrets = append(secrets, v)
			}
			parts[i] = name + "=" + redacted
		}
		r.RawQuery = strings.Join(parts, "&")
	}
	// A fragment is never sent, but could hold a token (OAuth implicit
	// flow): drop it from the printed form.
	if r.Fragment != "" || r.RawFragment != "" {
		r.Fragment, r.RawFragment = "", ""
	}
	kept := secrets[:0]
	for _, s := range secrets {
		if len(s) >= 3 { // shorter ones are no secrets, and would mangle texts
			kept = append(kept, s)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return len(kept[i]) > len(kept[j]) })
	return r.String(), kept
}

// scrub replaces the client's URL credentials in a text that did not come
// from the client (an error of the dialer or the network, a server's
// refusal body), in case it repeats them.
func (c *Client) scrub(s string) string {
	for _, secret := range c.secrets {
		s = strings.ReplaceAll(s, secret, redacted)
	}
	return s
}
