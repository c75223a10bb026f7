// Builds plugin.wasm from wasmhook.js (which imports plugin.js) with the
// Bytecode Alliance's componentize-js. Every WASI feature is off: the
// component imports only wasmhook:plugin/host, and the shim routes console
// to the plugin log.
import { createRequire, syncBuiltinESMExports } from "node:module";

// componentize-js 0.23 hands every string to the host through a JavaScript
// loop that measures it one character at a time: ~130 ns a character in the
// interpreter, so a 100 KB body cost 13 ms. The generated bindings are
// rewritten as they are written out, to measure with the engine's native
// TextEncoder instead (~2 ns a character); the bytes handed over are the same.
const FAST_ENCODE = `function _utf8AllocateAndEncode(s, realloc, memory) {
  if (typeof s !== 'string') {
    throw new TypeError('expected a string, received [' + typeof s + ']');
  }
  if (s.length === 0) { return { ptr: 1, len: 0 }; }
  const bytes = TEXT_ENCODER_UTF8.encode(s);
  const len = bytes.length;
  const ptr = realloc(0, 0, 1, len);
  new Uint8Array(memory.buffer, ptr, len).set(bytes);
  return { ptr, len, codepoints: s.length };
}
`;
const SLOW_ENCODE = /function _utf8AllocateAndEncode\(s, realloc, memory\) \{[\s\S]*?\n\}\n/;
const fsp = createRequire(import.meta.url)("node:fs/promises");
const writeFile = fsp.writeFile;
fsp.writeFile = (path, data, ...rest) => {
  if (String(path).endsWith("initializer.js") && typeof data === "string") {
    if (SLOW_ENCODE.test(data)) data = data.replace(SLOW_ENCODE, FAST_ENCODE);
    else console.warn("note: componentize-js bindings changed; strings keep its own encoder");
  }
  return writeFile(path, data, ...rest);
};
syncBuiltinESMExports();

const { componentize } = await import("@bytecodealliance/componentize-js");
const { component } = await componentize({
  sourcePath: "wasmhook.js",
  witPath: "wit",
  worldName: "transform",
  disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
});
fsp.writeFile = writeFile;
syncBuiltinESMExports();
await writeFile("plugin.wasm", component);
console.log(`plugin.wasm: ${component.length} bytes`);
