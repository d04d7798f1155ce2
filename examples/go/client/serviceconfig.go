package client

import (
	"fmt"
	"os"

	"google.golang.org/grpc"
)

// ServiceConfig returns the dial options that load a gRPC service config,
// the JSON of deploy/grpc-service-config.json or a copy of it, for Dial:
//
//	opts, err := client.ServiceConfig("deploy/grpc-service-config.json")
//	vow, err := client.Dial(ctx, "dns:///vow-headless.vow.svc.cluster.local:50051",
//		append(opts, grpc.WithInsecure())...)
//
// What it gives this client: round_robin over every address the resolver
// returns, and waitForReady, so that a call made while no replica is
// reachable waits for one (within its context: give calls a deadline)
// instead of spending its attempts on failing at once. Its retryPolicy is
// turned off (grpc.WithDisableRetry; grpc-go 1.33 applies it only with
// GRPC_GO_RETRY=on anyway): this client retries by itself, over more codes
// than the config can name safely, and two layers of retries multiply.
// grpc-go checks the JSON when Dial is called.
func ServiceConfig(path string) ([]grpc.DialOption, error) {
	config, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("service config: %w", err)
	}
	return []grpc.DialOption{grpc.WithDefaultServiceConfig(string(config)), grpc.WithDisableRetry()}, nil
}
