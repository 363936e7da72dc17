#!/usr/bin/env node
// The young generations are held at their initial size before the command's modules are even
// compiled (see young-generation.ts): hence the dynamic import.
import './hold-young-generation.js';

await import('./commands.js');
