#!/bin/sh
# Run by the Procfile before Streamlit starts on a Heroku dyno.
# Streamlit asks for an email address on its first run unless a credentials file exists, and a
# dyno has nobody to answer. Overwriting the file each time keeps this safe to rerun.
set -eu
mkdir -p "$HOME/.streamlit"
printf '[general]\nemail = ""\n' > "$HOME/.streamlit/credentials.toml"
