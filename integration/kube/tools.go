//go:build tools

// Package tools pins the Kubernetes commands Serval's integration tests build: the real
// kube-apiserver and kubectl, from one Kubernetes release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
