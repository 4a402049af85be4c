"""Architecture search for the Dense Prediction Cell: space adapter, samplers, study, executors, proxy."""
