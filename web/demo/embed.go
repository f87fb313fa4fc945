// Package webdemo holds the page of `tether demo web`: a bidi chat written
// with the TypeScript client (web/demo/app.ts, bundled into demo.js by
// `npm run build:demo` in web/ and committed).
package webdemo

import (
	"embed"
	"io/fs"
)

//go:embed index.html demo.js
var files embed.FS

// Files is the page and its script, to serve at "/".
var Files fs.FS = files
