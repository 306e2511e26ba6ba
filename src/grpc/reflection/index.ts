/** Public API of the reflection module: what src/main.ts and the tests need. */
export { addReflection, REFLECTION_SERVICE_NAMES, type ReflectionOptions } from './reflection.js';
