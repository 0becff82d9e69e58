"""The JSON `/api` routes: a donor's keys and their live tests, gateway tokens, and the admins'
tables (model aliases, prices)."""
