// Builds the page into dist/ (git-ignored): one minified ES module, the CSS and index.html.
// Everything comes from node_modules (npm ci at set-up): nothing is fetched at run time.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: ["src/main.jsx"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  jsx: "automatic",
  jsxImportSource: "preact",
  outfile: "dist/app.js",
  legalComments: "none",
  logLevel: "warning",
});
for (const f of ["index.html", "style.css", "favicon.svg"]) copyFileSync(`src/${f}`, `dist/${f}`);
