// Imported first by the CLI, so that it runs before any other module loads: the young
// generations do not grow while the modules load (see young-generation.ts).
import { allowYoungGenerationGrowth } from './young-generation.js';

allowYoungGenerationGrowth(false);
