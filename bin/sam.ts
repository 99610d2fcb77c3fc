#!/usr/bin/env node
import { main } from '../src/commands/index.js';

process.exitCode = await main(process.argv);
