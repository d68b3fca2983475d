"""A local fleet for demos and tests: network-namespace hosts with sshd, a sample app, HAProxy."""
