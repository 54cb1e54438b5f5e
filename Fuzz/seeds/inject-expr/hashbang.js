#!/usr/bin/env node
secrets.A