package cni

import "github.com/margaynet/margay/control/cni/cnitest"

var testConf = cnitest.Conf
