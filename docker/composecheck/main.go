// composecheck loads a compose file with compose-go, the library `docker compose` itself uses,
// and prints the resolved project as JSON.
//
// Loading runs what `docker compose config` runs before it talks to an engine: the compose-spec
// JSON schema, variable interpolation (from the process environment and the .env file next to
// the compose file), normalization (build contexts, networks, default values) and the
// consistency checks (depends_on, volumes, networks and secrets that must be declared). Nothing
// is pulled, built or started.
//
//	composecheck [-env-file FILE] COMPOSE_FILE
//
// Exit codes: 0 loaded (the project on stdout as JSON); 1 the loader refused the file (its error
// on stderr); 2 bad usage.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	envFile := flag.String("env-file", "", "a .env file to interpolate from (default: the .env next to the compose file, if any)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-env-file FILE] COMPOSE_FILE")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	opts := []cli.ProjectOptionsFn{
		cli.WithOsEnv,
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
		cli.WithNormalization(true),
		cli.WithInterpolation(true),
	}
	if *envFile != "" {
		opts = append(opts, cli.WithEnvFiles(*envFile))
	} else {
		opts = append(opts, cli.WithEnvFiles())
	}
	opts = append(opts, cli.WithDotEnv)
	options, err := cli.NewProjectOptions([]string{flag.Arg(0)}, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %v\n", err)
		os.Exit(1)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %s: %v\n", flag.Arg(0), err)
		os.Exit(1)
	}
	out, err := json.MarshalIndent(project, "", "  ")
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: cannot print the project: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
