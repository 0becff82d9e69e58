"""The sign-in wing: who a browser is. One provider table (Linux.do, OpenID Connect, GitHub)
over one state/PKCE/cookie flow, the calls to each provider, browser sessions with their CSRF
token, and the one-time links of `sharekey login-link`."""
