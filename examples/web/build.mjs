// Bundles src/main.ts into dist/app.js for browsers, and the CSS it imports (xterm's) into
// dist/app.css. `platform: "browser"` makes the build fail if anything pulls in Node modules
// (@berth/sdk/web must not).
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

await build({
  absWorkingDir: fileURLToPath(new URL(".", import.meta.url)),
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js",
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  sourcemap: true,
  minify: true,
  logLevel: "info",
});
