// Builds plugin.wasm from wasmhook.js (which imports plugin.js) with the
// Bytecode Alliance's componentize-js. Every WASI feature is off: the
// component imports only wasmhook:plugin/host, and the shim routes console
// to the plugin log.
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const { component } = await componentize({
  sourcePath: "wasmhook.js",
  witPath: "wit",
  worldName: "transform",
  disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
});
await writeFile("plugin.wasm", component);
console.log(`plugin.wasm: ${component.length} bytes`);
