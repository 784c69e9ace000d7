"""Real peers for the tests: a private MariaDB, a private Postfix, loopback ports."""
